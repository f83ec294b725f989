// Meta-trains the sine-wave regressor of the Reptile paper through the C++ wrapper
// (bindings/cpp/reptile.hpp), evaluates it with the paper's protocol, round-trips a
// checkpoint, and prints the post-adaptation MSE.
//
//     sine_cpp [iterations [eval_tasks [threads [seed [checkpoint]]]]]
//     (defaults: 30000 1000 0 0 sine_cpp.safetensors)
//
// With the same arguments it trains and evaluates exactly as examples/c/sine.c does, so the
// machine-readable last line, "post_adaptation_mse <mean> <median> <before>", is the same.
#include "reptile.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

namespace {

unsigned long arg_or(int argc, char **argv, int i, unsigned long fallback) {
    if (argc <= i) {
        return fallback;
    }
    char *end = nullptr;
    const unsigned long v = std::strtoul(argv[i], &end, 10);
    if (end == argv[i] || *end != '\0') {
        throw std::invalid_argument(std::string("argument is not a number: ") + argv[i]);
    }
    return v;
}

int run(int argc, char **argv) {
    const unsigned long iterations = arg_or(argc, argv, 1, 30000);
    const std::size_t eval_tasks = arg_or(argc, argv, 2, 1000);
    const std::size_t threads = arg_or(argc, argv, 3, 0);
    const std::uint64_t seed = arg_or(argc, argv, 4, 0);
    const std::string checkpoint = argc > 5 ? argv[5] : "sine_cpp.safetensors";
    constexpr std::size_t shots = 10, eval_steps = 32;

    if (reptile::version() != REPTILE_VERSION_STRING) {
        std::cerr << "sine_cpp: header " << REPTILE_VERSION_STRING << " but library " << reptile::version() << "\n";
        return 1;
    }
    std::cout << "reptile " << reptile::version() << " (C++), CUDA "
              << (reptile::cuda_available() ? "available" : "not available") << "\n";

    const reptile::model initial({1, 64, 64, 1}, reptile::activation::tanh, reptile::loss::mse, seed);
    reptile::trainer_config config;
    config.planned_iterations = iterations;
    config.threads = threads;
    config.seed = seed;
    reptile::trainer trainer(initial, config);
    reptile::sine_sampler sampler(seed);
    if (trainer.backend().first != REPTILE_BACKEND_CPU) {
        std::cerr << "sine_cpp: the default configuration should train on the CPU\n";
        return 1;
    }
    std::cout << "meta-training a 1-64-64-1 tanh network (" << trainer.num_params() << " parameters) for "
              << iterations << " iterations on " << trainer.threads() << " threads\n";

    for (unsigned long it = 0; it < iterations; it++) {
        const reptile_step_stats s = trainer.step(sampler); // meta_batch fresh sine tasks
        if ((it + 1) % (iterations < 5 ? 1 : iterations / 5) == 0) {
            std::printf("iteration %lu: epsilon %.4f, inner loss %.4f -> %.4f\n", it + 1, s.epsilon, s.loss_before,
                        s.loss_after);
        }
    }

    const reptile::eval_report report = trainer.evaluate_sine(sampler, eval_tasks, shots, {0, eval_steps});
    const float before = report.mean_loss(0), mean = report.mean_loss(1), median = report.median_loss(1);

    // Adapt to one more task and predict on the grid, with an owning model handle.
    const reptile::sine_sampler::eval_data one = sampler.eval_tasks(1, shots);
    const reptile::model adapted = trainer.adapt(one.support(), eval_steps);
    const std::vector<float> y = adapted.predict(one.query_x);
    double mse = 0.0;
    for (std::size_t i = 0; i < y.size(); i++) {
        mse += (y[i] - one.query_y[i]) * (y[i] - one.query_y[i]) / y.size();
    }
    std::printf("one more task: MSE %.4f after %zu steps on %zu points\n", mse, eval_steps, shots);

    // Errors arrive as exceptions carrying the status and the message.
    try {
        std::vector<float> too_short(3);
        adapted.predict(one.query_x, too_short);
        std::cerr << "sine_cpp: a wrong output length was accepted\n";
        return 1;
    } catch (const reptile::error &e) {
        if (e.status() != REPTILE_STATUS_SHAPE_MISMATCH || e.message().empty()) {
            std::cerr << "sine_cpp: unexpected error " << e.what() << "\n";
            return 1;
        }
        std::cout << "caught expected error: " << e.what() << "\n";
    }

    // Device-resident training (tasks drawn on the GPU) needs the CUDA back end: this trainer
    // is on the CPU, so the call throws and changes nothing.
    try {
        std::vector<float> losses(2 * config.meta_batch);
        trainer.train_sine_resident(10, seed, losses);
        std::cerr << "sine_cpp: device-resident training ran on a CPU trainer\n";
        return 1;
    } catch (const reptile::error &e) {
        if (e.status() != REPTILE_STATUS_INVALID_ARGUMENT || trainer.iteration() != iterations) {
            std::cerr << "sine_cpp: unexpected error " << e.what() << "\n";
            return 1;
        }
        std::cout << "caught expected error: " << e.what() << "\n";
    }

    // Checkpoint round trip: the model and the resumed trainer get θ and the iteration back.
    trainer.save(checkpoint);
    const reptile::model loaded = reptile::model::load(checkpoint);
    const reptile::trainer resumed = reptile::trainer::load(checkpoint, config);
    if (loaded.params() != trainer.params() || resumed.iteration() != iterations) {
        std::cerr << "sine_cpp: checkpoint round trip lost θ or the iteration count\n";
        return 1;
    }
    std::cout << "checkpoint " << checkpoint << " round-trips (" << loaded.num_params() << " parameters, iteration "
              << resumed.iteration() << ")\n";

    std::printf("post-adaptation MSE over %zu tasks after %zu steps: mean %.4f, median %.4f (before adaptation "
                "%.4f)\n",
                eval_tasks, eval_steps, mean, median, before);
    std::printf("post_adaptation_mse %.6f %.6f %.6f\n", mean, median, before);
    return 0;
}

} // namespace

int main(int argc, char **argv) {
    try {
        return run(argc, argv);
    } catch (const reptile::error &e) {
        std::cerr << "sine_cpp: " << e.what() << "\n";
    } catch (const std::exception &e) {
        std::cerr << "sine_cpp: " << e.what() << "\n";
    }
    return 1;
}
