/*
 * Meta-trains the sine-wave regressor of the Reptile paper through reptile's C API, then
 * evaluates it with the paper's protocol (adapt to 10 support points with 32 SGD steps, score
 * the MSE on the 50-point grid) and prints the post-adaptation MSE.
 *
 *     sine [iterations [eval_tasks [threads [seed [device]]]]]   (defaults: 30000 1000 0 0 cpu)
 *
 * device: "cpu" trains one host-drawn task per step on the CPU; "cuda" or "cuda:N" keeps the
 * whole meta-training run on that GPU (tasks drawn on the device, no host round-trip per
 * iteration: reptile_trainer_train_sine_resident), then evaluates as the CPU run does.
 *
 * The last line is machine-readable: "post_adaptation_mse <mean> <median> <before>".
 * Exit status 0 on success, 1 on any failure (with the library's message on stderr).
 */
#define _POSIX_C_SOURCE 199309L /* clock_gettime */
#include "reptile.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SHOTS 10
#define EVAL_STEPS 32

/* Prints a failed call with its status name and the library's thread-local message. */
static void report_failure(reptile_status status, const char *call) {
    char message[512];
    size_t written = 0;
    if (reptile_last_error_message(message, sizeof message, &written) != REPTILE_STATUS_OK) {
        strcpy(message, "(no message)");
    }
    fprintf(stderr, "sine: %s failed: %s: %s%s\n", call, reptile_status_str((int)status), message,
            written >= sizeof message ? " [truncated]" : "");
}

#define CHECK(call)                                  \
    do {                                             \
        reptile_status status_ = (call);             \
        if (status_ != REPTILE_STATUS_OK) {          \
            report_failure(status_, #call);          \
            goto done;                               \
        }                                            \
    } while (0)

static unsigned long arg_or(int argc, char **argv, int i, unsigned long fallback) {
    if (argc <= i) {
        return fallback;
    }
    char *end = NULL;
    unsigned long v = strtoul(argv[i], &end, 10);
    if (end == argv[i] || *end != '\0') {
        fprintf(stderr, "sine: argument %d (%s) is not a number\n", i, argv[i]);
        exit(1);
    }
    return v;
}

/* Seconds on the monotonic clock. */
static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Parses "cpu", "cuda" or "cuda:N" into a back end and device ordinal; 0 on anything else. */
static int parse_device(const char *s, reptile_backend *backend, uint32_t *device) {
    *device = 0;
    if (strcmp(s, "cpu") == 0) {
        *backend = REPTILE_BACKEND_CPU;
        return 1;
    }
    if (strncmp(s, "cuda", 4) != 0) {
        return 0;
    }
    *backend = REPTILE_BACKEND_CUDA;
    if (s[4] == '\0') {
        return 1;
    }
    if (s[4] != ':' || s[5] < '0' || s[5] > '9') {
        return 0;
    }
    char *end = NULL;
    unsigned long n = strtoul(s + 5, &end, 10);
    if (*end != '\0' || n > 1000000) {
        return 0;
    }
    *device = (uint32_t)n;
    return 1;
}

int main(int argc, char **argv) {
    const unsigned long iterations = arg_or(argc, argv, 1, 30000);
    const size_t eval_tasks = (size_t)arg_or(argc, argv, 2, 1000);
    const size_t threads = (size_t)arg_or(argc, argv, 3, 0);
    const uint64_t seed = (uint64_t)arg_or(argc, argv, 4, 0);
    reptile_backend backend = REPTILE_BACKEND_CPU;
    uint32_t cuda_device = 0;
    if (argc > 5 && !parse_device(argv[5], &backend, &cuda_device)) {
        fprintf(stderr, "sine: device %s is not cpu, cuda or cuda:N\n", argv[5]);
        return 1;
    }
    int exit_code = 1;

    reptile_model *model = NULL;
    reptile_trainer *trainer = NULL;
    reptile_sine_sampler *sampler = NULL;
    reptile_eval_report *report = NULL;
    float *support_x = NULL, *support_y = NULL, *query_x = NULL, *query_y = NULL, *prediction = NULL;

    if (strcmp(reptile_version(), REPTILE_VERSION_STRING) != 0) {
        fprintf(stderr, "sine: header %s but library %s\n", REPTILE_VERSION_STRING, reptile_version());
        return 1;
    }
    if (iterations == 0 || eval_tasks == 0) {
        fprintf(stderr, "sine: iterations and eval_tasks must be at least 1\n");
        return 1;
    }
    if (backend == REPTILE_BACKEND_CUDA && iterations > 4000000000UL) {
        fprintf(stderr, "sine: at most 4e9 iterations on the GPU\n");
        return 1;
    }
    printf("reptile %s, CUDA %s\n", reptile_version(), reptile_cuda_available() ? "available" : "not available");

    /* The paper's network: 1-64-64-1, tanh, MSE. */
    const size_t widths[] = {1, 64, 64, 1};
    CHECK(reptile_model_new(widths, sizeof widths / sizeof widths[0], REPTILE_ACTIVATION_TANH, REPTILE_LOSS_MSE,
                            seed, &model));
    size_t n_params = 0;
    CHECK(reptile_model_num_params(model, &n_params));

    reptile_trainer_config config;
    CHECK(reptile_trainer_config_default(sizeof config, &config));
    config.planned_iterations = iterations; /* anneal ε 0.1 → 0 over this run */
    config.threads = threads;
    config.seed = seed;
    config.backend = backend;
    config.cuda_device = cuda_device;
    CHECK(reptile_trainer_new(model, &config, &trainer));
    CHECK(reptile_sine_sampler_new(seed, &sampler));
    printf("meta-training a 1-64-64-1 tanh network (%zu parameters) for %lu iterations on %s\n", n_params, iterations,
           backend == REPTILE_BACKEND_CUDA ? "the GPU, device-resident" : "the CPU");
    const double started = now_seconds();

    if (backend == REPTILE_BACKEND_CUDA) {
        /* The whole run on the GPU, in five chunks for progress: each call draws its tasks on
         * the device and returns the last iteration's losses (before, after adaptation). */
        float losses[2];
        const unsigned long chunk = iterations < 5 ? 1 : iterations / 5;
        unsigned long done = 0;
        while (done < iterations) {
            const unsigned long c = iterations - done < chunk ? iterations - done : chunk;
            CHECK(reptile_trainer_train_sine_resident(trainer, (uint32_t)c, seed, losses, 2));
            done += c;
            printf("iteration %lu: inner loss %.4f -> %.4f (last task)\n", done, losses[0], losses[1]);
        }
    }

    /* Meta-training: one task per outer step, drawn by the built-in sampler into host
     * buffers and passed back as a borrowed task batch. */
    float x[REPTILE_SINE_GRID_POINTS], y[REPTILE_SINE_GRID_POINTS];
    reptile_tasks batch = {0};
    batch.n_tasks = 1;
    batch.n_points = REPTILE_SINE_GRID_POINTS;
    batch.x = x;
    batch.n_x = REPTILE_SINE_GRID_POINTS;
    batch.y = y;
    batch.n_y = REPTILE_SINE_GRID_POINTS;
    double running = 0.0;
    for (unsigned long it = 0; backend == REPTILE_BACKEND_CPU && it < iterations; it++) {
        reptile_step_stats stats;
        CHECK(reptile_sine_sampler_train_batch(sampler, 1, x, REPTILE_SINE_GRID_POINTS, y, REPTILE_SINE_GRID_POINTS));
        CHECK(reptile_trainer_step(trainer, &batch, &stats));
        running = it == 0 ? stats.loss_after : 0.99 * running + 0.01 * stats.loss_after;
        if ((it + 1) % (iterations < 5 ? 1 : iterations / 5) == 0) {
            printf("iteration %lu: epsilon %.4f, inner loss %.4f -> %.4f (running %.4f)\n", it + 1, stats.epsilon,
                   stats.loss_before, stats.loss_after, running);
        }
    }
    uint64_t done_iterations = 0;
    CHECK(reptile_trainer_iteration(trainer, &done_iterations));
    if (done_iterations != iterations) {
        fprintf(stderr, "sine: trainer reports %lu iterations, expected %lu\n", (unsigned long)done_iterations,
                iterations);
        goto done;
    }
    printf("trained in %.3f s\n", now_seconds() - started);

    /* Evaluation with the paper's protocol, on tasks the sampler writes into host buffers. */
    const size_t n_support = eval_tasks * SHOTS, n_query = eval_tasks * REPTILE_SINE_GRID_POINTS;
    support_x = malloc(n_support * sizeof *support_x);
    support_y = malloc(n_support * sizeof *support_y);
    query_x = malloc(n_query * sizeof *query_x);
    query_y = malloc(n_query * sizeof *query_y);
    prediction = malloc(REPTILE_SINE_GRID_POINTS * sizeof *prediction);
    if (!support_x || !support_y || !query_x || !query_y || !prediction) {
        fprintf(stderr, "sine: out of memory\n");
        goto done;
    }
    CHECK(reptile_sine_sampler_eval_tasks(sampler, eval_tasks, SHOTS, support_x, n_support, support_y, n_support,
                                          query_x, n_query, query_y, n_query));
    reptile_tasks support = {0}, query = {0};
    support.n_tasks = query.n_tasks = eval_tasks;
    support.n_points = SHOTS;
    support.x = support_x;
    support.n_x = n_support;
    support.y = support_y;
    support.n_y = n_support;
    query.n_points = REPTILE_SINE_GRID_POINTS;
    query.x = query_x;
    query.n_x = n_query;
    query.y = query_y;
    query.n_y = n_query;
    const size_t steps[] = {0, EVAL_STEPS};
    CHECK(reptile_trainer_evaluate(trainer, &support, &query, steps, 2, &report));
    float before = 0, mean = 0, median = 0;
    CHECK(reptile_eval_report_mean_loss(report, 0, &before));
    CHECK(reptile_eval_report_mean_loss(report, 1, &mean));
    CHECK(reptile_eval_report_median_loss(report, 1, &median));

    /* Adapt to the first evaluation task alone and predict on its grid. */
    reptile_tasks first = support;
    first.n_tasks = 1;
    first.n_x = first.n_y = SHOTS;
    CHECK(reptile_trainer_adapt_predict(trainer, &first, EVAL_STEPS, query_x, REPTILE_SINE_GRID_POINTS, prediction,
                                        REPTILE_SINE_GRID_POINTS));
    double first_mse = 0.0;
    for (size_t i = 0; i < REPTILE_SINE_GRID_POINTS; i++) {
        double d = (double)prediction[i] - (double)query_y[i];
        first_mse += d * d / REPTILE_SINE_GRID_POINTS;
    }
    printf("first evaluation task: MSE %.4f after %d steps on %d points\n", first_mse, EVAL_STEPS, SHOTS);
    printf("post-adaptation MSE over %zu tasks after %d steps: mean %.4f, median %.4f (before adaptation %.4f)\n",
           eval_tasks, EVAL_STEPS, mean, median, before);
    printf("post_adaptation_mse %.6f %.6f %.6f\n", mean, median, before);
    exit_code = 0;

done:
    free(prediction);
    free(query_y);
    free(query_x);
    free(support_y);
    free(support_x);
    reptile_eval_report_free(report);
    reptile_sine_sampler_free(sampler);
    reptile_trainer_free(trainer);
    reptile_model_free(model);
    return exit_code;
}
