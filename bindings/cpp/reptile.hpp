// reptile.hpp: a header-only C++17 RAII wrapper over reptile's C API (reptile.h).
//
// - Handles (model, trainer, eval_report, sine_sampler) are move-only and free themselves.
// - Every failure throws reptile::error, which carries the status code and the library's
//   message.
// - Buffers are passed as reptile::span<T>, a tiny non-owning view (C++17 has no std::span)
//   that converts from std::vector, std::array, C arrays, or a pointer and a size.
//
// Thread safety is that of the C handles (see reptile.h): a model may be read from several
// threads at once; a trainer and a sampler are used from one thread at a time.
//
// Link with the C library as usual (CMake: target reptile::reptile; pkg-config: reptile).
#ifndef REPTILE_HPP
#define REPTILE_HPP

#include "reptile.h"

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace reptile {

/// A failed call: the status code and the library's message about it.
class error : public std::runtime_error {
  public:
    error(reptile_status status, const std::string &message)
        : std::runtime_error(std::string(reptile_status_str(static_cast<int>(status))) + ": " + message),
          status_(status), message_(message) {}
    /// The status code, e.g. REPTILE_STATUS_SHAPE_MISMATCH.
    reptile_status status() const noexcept { return status_; }
    /// The library's message alone (what() also names the status).
    const std::string &message() const noexcept { return message_; }

  private:
    reptile_status status_;
    std::string message_;
};

namespace detail {

/// The calling thread's last error message from the library.
inline std::string last_error_message() {
    std::size_t needed = 0;
    if (reptile_last_error_message(nullptr, 0, &needed) != REPTILE_STATUS_OK) {
        return "(no message)";
    }
    std::string message(needed + 1, '\0');
    std::size_t written = 0;
    if (reptile_last_error_message(&message[0], message.size(), &written) != REPTILE_STATUS_OK) {
        return "(no message)";
    }
    message.resize(written < needed ? written : needed);
    return message;
}

/// Throws reptile::error unless `status` is REPTILE_STATUS_OK.
inline void check(reptile_status status) {
    if (status != REPTILE_STATUS_OK) {
        throw error(status, last_error_message());
    }
}

template <class T, void (*Free)(T *)> struct deleter {
    void operator()(T *p) const noexcept { Free(p); }
};

template <class T, void (*Free)(T *)> using handle = std::unique_ptr<T, deleter<T, Free>>;

} // namespace detail

/// A non-owning view of `size()` contiguous elements of type T (use `span<const T>` for
/// inputs). Converts from anything with data() and size() (std::vector, std::array, span<U>)
/// and from C arrays. It does not extend the lifetime of what it views.
template <class T> class span {
  public:
    constexpr span() noexcept = default;
    constexpr span(T *data, std::size_t size) noexcept : data_(data), size_(size) {}
    template <std::size_t N> constexpr span(T (&array)[N]) noexcept : data_(array), size_(N) {}
    template <class C, class = std::enable_if_t<!std::is_same_v<std::remove_cv_t<C>, span> &&
                                                std::is_convertible_v<decltype(std::declval<C &>().data()), T *>>>
    constexpr span(C &container) noexcept : data_(container.data()), size_(container.size()) {}

    constexpr T *data() const noexcept { return data_; }
    constexpr std::size_t size() const noexcept { return size_; }
    constexpr bool empty() const noexcept { return size_ == 0; }
    constexpr T *begin() const noexcept { return data_; }
    constexpr T *end() const noexcept { return data_ + size_; }
    constexpr T &operator[](std::size_t i) const noexcept { return data_[i]; }

  private:
    T *data_ = nullptr;
    std::size_t size_ = 0;
};

/// Hidden-layer nonlinearity.
enum class activation : reptile_activation { tanh = REPTILE_ACTIVATION_TANH, relu = REPTILE_ACTIVATION_RELU };

/// Training loss.
enum class loss : reptile_loss { mse = REPTILE_LOSS_MSE, softmax_cross_entropy = REPTILE_LOSS_SOFTMAX_CROSS_ENTROPY };

/// The library's version, "MAJOR.MINOR.PATCH".
inline std::string version() { return reptile_version(); }

/// Whether the CUDA back end can be used (never throws, never aborts).
inline bool cuda_available() noexcept { return reptile_cuda_available(); }

/// A borrowed batch of n_tasks tasks × n_points points (see reptile_tasks): inputs x and
/// either real-valued targets y (MSE) or class labels (cross-entropy). The viewed data must
/// outlive the call it is passed to.
struct tasks {
    std::size_t n_tasks = 0;
    std::size_t n_points = 0;
    span<const float> x;
    span<const float> y;
    span<const std::uint32_t> labels;

    /// A regression batch.
    static tasks regression(std::size_t n_tasks, std::size_t n_points, span<const float> x, span<const float> y) {
        tasks t;
        t.n_tasks = n_tasks;
        t.n_points = n_points;
        t.x = x;
        t.y = y;
        return t;
    }
    /// A classification batch.
    static tasks classification(std::size_t n_tasks, std::size_t n_points, span<const float> x,
                                span<const std::uint32_t> labels) {
        tasks t;
        t.n_tasks = n_tasks;
        t.n_points = n_points;
        t.x = x;
        t.labels = labels;
        return t;
    }
    /// The C view.
    reptile_tasks c_view() const noexcept {
        reptile_tasks t{};
        t.n_tasks = n_tasks;
        t.n_points = n_points;
        t.x = x.data();
        t.n_x = x.size();
        t.y = y.empty() ? nullptr : y.data();
        t.n_y = y.size();
        t.labels = labels.empty() ? nullptr : labels.data();
        t.n_labels = labels.size();
        return t;
    }
};

/// A network and its parameters (see reptile_model). Move-only.
class model {
  public:
    /// A freshly initialized model: widths {in, h1, ..., out}.
    model(const std::vector<std::size_t> &widths, activation act, loss kind, std::uint64_t seed = 0) {
        reptile_model *p = nullptr;
        detail::check(reptile_model_new(widths.data(), widths.size(), static_cast<reptile_activation>(act),
                                        static_cast<reptile_loss>(kind), seed, &p));
        h_.reset(p);
    }
    /// A model with the given parameters.
    static model from_params(const std::vector<std::size_t> &widths, activation act, loss kind,
                             span<const float> params) {
        reptile_model *p = nullptr;
        detail::check(reptile_model_from_params(widths.data(), widths.size(), static_cast<reptile_activation>(act),
                                                static_cast<reptile_loss>(kind), params.data(), params.size(), &p));
        return model(p);
    }
    /// Loads a safetensors checkpoint.
    static model load(const std::string &path) {
        reptile_model *p = nullptr;
        detail::check(reptile_model_load(path.c_str(), &p));
        return model(p);
    }
    /// Takes ownership of a handle from the C API.
    explicit model(reptile_model *owned) noexcept : h_(owned) {}

    /// An independent copy.
    model clone() const {
        reptile_model *p = nullptr;
        detail::check(reptile_model_clone(get(), &p));
        return model(p);
    }
    std::size_t num_params() const {
        std::size_t n = 0;
        detail::check(reptile_model_num_params(get(), &n));
        return n;
    }
    std::vector<std::size_t> widths() const {
        std::size_t n = 0;
        detail::check(reptile_model_num_widths(get(), &n));
        std::vector<std::size_t> w(n);
        detail::check(reptile_model_widths(get(), w.data(), w.size()));
        return w;
    }
    activation hidden_activation() const {
        reptile_activation a = 0;
        detail::check(reptile_model_activation(get(), &a));
        return static_cast<activation>(a);
    }
    loss loss_kind() const {
        reptile_loss l = 0;
        detail::check(reptile_model_loss(get(), &l));
        return static_cast<loss>(l);
    }
    /// θ, flat (layout: see reptile_model).
    std::vector<float> params() const {
        std::vector<float> theta(num_params());
        detail::check(reptile_model_get_params(get(), theta.data(), theta.size()));
        return theta;
    }
    void set_params(span<const float> theta) {
        detail::check(reptile_model_set_params(get(), theta.data(), theta.size()));
    }
    /// Outputs [points × out] for inputs x [points × in], into y.
    void predict(span<const float> x, span<float> y) const {
        detail::check(reptile_model_predict(get(), x.data(), x.size(), y.data(), y.size()));
    }
    /// Outputs [points × out] for inputs x [points × in].
    std::vector<float> predict(span<const float> x) const {
        const std::vector<std::size_t> w = widths();
        std::vector<float> y(x.size() / w.front() * w.back());
        predict(x, y);
        return y;
    }
    /// A copy adapted to one task with `steps` SGD steps.
    model adapt(const tasks &support, float lr, std::size_t steps, std::size_t batch_size = 0,
                std::uint64_t seed = 0) const {
        const reptile_tasks view = support.c_view();
        reptile_model *p = nullptr;
        detail::check(reptile_model_adapt(get(), &view, lr, steps, batch_size, seed, &p));
        return model(p);
    }
    void save(const std::string &path) const { detail::check(reptile_model_save(get(), path.c_str())); }

    /// The C handle (still owned by this object).
    reptile_model *get() const noexcept { return h_.get(); }

  private:
    detail::handle<reptile_model, reptile_model_free> h_;
};

/// The trainer configuration, filled with the library's defaults (the paper's sine setup);
/// change the fields you need. See reptile_trainer_config.
struct trainer_config : reptile_trainer_config {
    trainer_config() : reptile_trainer_config() {
        detail::check(reptile_trainer_config_default(sizeof(reptile_trainer_config), this));
    }
};

/// An evaluation's result (see reptile_eval_report). Move-only.
class eval_report {
  public:
    explicit eval_report(reptile_eval_report *owned) noexcept : h_(owned) {}

    std::size_t n_tasks() const {
        std::size_t n = 0;
        detail::check(reptile_eval_report_n_tasks(get(), &n));
        return n;
    }
    std::size_t n_checkpoints() const {
        std::size_t n = 0;
        detail::check(reptile_eval_report_n_checkpoints(get(), &n));
        return n;
    }
    std::vector<std::size_t> steps() const {
        std::vector<std::size_t> s(n_checkpoints());
        detail::check(reptile_eval_report_steps(get(), s.data(), s.size()));
        return s;
    }
    float mean_loss(std::size_t checkpoint) const { return scalar(reptile_eval_report_mean_loss, checkpoint); }
    float median_loss(std::size_t checkpoint) const { return scalar(reptile_eval_report_median_loss, checkpoint); }
    float mean_accuracy(std::size_t checkpoint) const {
        return scalar(reptile_eval_report_mean_accuracy, checkpoint);
    }
    float accuracy_ci95(std::size_t checkpoint) const {
        return scalar(reptile_eval_report_accuracy_ci95, checkpoint);
    }
    std::vector<float> losses(std::size_t checkpoint) const {
        std::vector<float> v(n_tasks());
        detail::check(reptile_eval_report_losses(get(), checkpoint, v.data(), v.size()));
        return v;
    }
    std::vector<float> accuracies(std::size_t checkpoint) const {
        std::vector<float> v(n_tasks());
        detail::check(reptile_eval_report_accuracies(get(), checkpoint, v.data(), v.size()));
        return v;
    }
    reptile_eval_report *get() const noexcept { return h_.get(); }

  private:
    float scalar(reptile_status (*f)(const reptile_eval_report *, std::size_t, float *), std::size_t j) const {
        float v = 0.0f;
        detail::check(f(get(), j, &v));
        return v;
    }
    detail::handle<reptile_eval_report, reptile_eval_report_free> h_;
};

/// The sine-wave task sampler of the Reptile paper (see reptile_sine_sampler). Move-only.
class sine_sampler {
  public:
    static constexpr std::size_t grid_points = REPTILE_SINE_GRID_POINTS;

    /// n_tasks training tasks on the grid: x and y are [n_tasks × 50].
    struct train_batch_data {
        std::size_t n_tasks = 0;
        std::vector<float> x, y;
        reptile::tasks tasks() const { return reptile::tasks::regression(n_tasks, grid_points, x, y); }
    };
    /// Evaluation tasks: support [n_tasks × shots], query [n_tasks × 50].
    struct eval_data {
        std::size_t n_tasks = 0, shots = 0;
        std::vector<float> support_x, support_y, query_x, query_y;
        reptile::tasks support() const { return reptile::tasks::regression(n_tasks, shots, support_x, support_y); }
        reptile::tasks query() const { return reptile::tasks::regression(n_tasks, grid_points, query_x, query_y); }
    };

    explicit sine_sampler(std::uint64_t seed) {
        reptile_sine_sampler *p = nullptr;
        detail::check(reptile_sine_sampler_new(seed, &p));
        h_.reset(p);
    }
    /// The grid linspace(-5, 5, 50).
    static std::vector<float> grid() {
        std::vector<float> x(grid_points);
        detail::check(reptile_sine_grid(x.data(), x.size()));
        return x;
    }
    /// One task's (amplitude, phase).
    std::pair<float, float> sample() {
        float amplitude = 0.0f, phase = 0.0f;
        detail::check(reptile_sine_sampler_sample(get(), &amplitude, &phase));
        return {amplitude, phase};
    }
    train_batch_data train_batch(std::size_t n_tasks) {
        train_batch_data b;
        b.n_tasks = n_tasks;
        b.x.resize(n_tasks * grid_points);
        b.y.resize(n_tasks * grid_points);
        detail::check(reptile_sine_sampler_train_batch(get(), n_tasks, b.x.data(), b.x.size(), b.y.data(), b.y.size()));
        return b;
    }
    eval_data eval_tasks(std::size_t n_tasks, std::size_t shots) {
        eval_data e;
        e.n_tasks = n_tasks;
        e.shots = shots;
        e.support_x.resize(n_tasks * shots);
        e.support_y.resize(n_tasks * shots);
        e.query_x.resize(n_tasks * grid_points);
        e.query_y.resize(n_tasks * grid_points);
        detail::check(reptile_sine_sampler_eval_tasks(get(), n_tasks, shots, e.support_x.data(), e.support_x.size(),
                                                      e.support_y.data(), e.support_y.size(), e.query_x.data(),
                                                      e.query_x.size(), e.query_y.data(), e.query_y.size()));
        return e;
    }
    reptile_sine_sampler *get() const noexcept { return h_.get(); }

  private:
    detail::handle<reptile_sine_sampler, reptile_sine_sampler_free> h_;
};

/// The sum of task deltas of part of a meta-batch (split steps across processes).
struct delta_sum {
    std::vector<float> sum;
    reptile_delta_stats stats{};
};

/// Meta-trains a model with Reptile (see reptile_trainer). Move-only; one thread at a time.
class trainer {
  public:
    /// A trainer at iteration 0 on a copy of `m`.
    trainer(const model &m, const reptile_trainer_config &config) {
        reptile_trainer *p = nullptr;
        detail::check(reptile_trainer_new(m.get(), &config, &p));
        h_.reset(p);
    }
    /// Resumes from a checkpoint written by save().
    static trainer load(const std::string &path, const reptile_trainer_config &config) {
        reptile_trainer *p = nullptr;
        detail::check(reptile_trainer_load(path.c_str(), &config, &p));
        return trainer(p);
    }
    explicit trainer(reptile_trainer *owned) noexcept : h_(owned) {}

    /// One outer step on a caller-given batch.
    reptile_step_stats step(const tasks &batch) {
        const reptile_tasks view = batch.c_view();
        reptile_step_stats s{};
        detail::check(reptile_trainer_step(get(), &view, &s));
        return s;
    }
    /// One outer step on meta_batch fresh sine tasks from `sampler`.
    reptile_step_stats step(sine_sampler &sampler) {
        reptile_step_stats s{};
        detail::check(reptile_trainer_step_sine(get(), sampler.get(), &s));
        return s;
    }
    /// `iterations` iterations of sine-wave meta-training kept on the GPU (needs the CUDA
    /// back end; tasks drawn on the device from `seed`, no host round-trip per iteration):
    /// reptile_trainer_train_sine_resident. Writes the last iteration's losses, before and
    /// after adaptation for each task, to `losses` (2 × the config's meta_batch floats).
    void train_sine_resident(std::uint32_t iterations, std::uint64_t seed, span<float> losses) {
        detail::check(reptile_trainer_train_sine_resident(get(), iterations, seed, losses.data(), losses.size()));
    }
    /// First half of a split step.
    delta_sum task_deltas(const tasks &batch, std::uint64_t task_index_offset = 0) {
        const reptile_tasks view = batch.c_view();
        delta_sum d;
        d.sum.resize(num_params());
        detail::check(reptile_trainer_task_deltas(get(), &view, task_index_offset, d.sum.data(), d.sum.size(),
                                                  &d.stats));
        return d;
    }
    /// Second half of a split step.
    reptile_step_stats apply_delta(const delta_sum &d) {
        reptile_step_stats s{};
        detail::check(reptile_trainer_apply_delta(get(), d.sum.data(), d.sum.size(), &d.stats, &s));
        return s;
    }
    /// θ adapted to one task.
    model adapt(const tasks &support, std::size_t steps) const {
        const reptile_tasks view = support.c_view();
        reptile_model *p = nullptr;
        detail::check(reptile_trainer_adapt(get(), &view, steps, &p));
        return model(p);
    }
    /// Adapts to one task and predicts for x into y.
    void adapt_predict(const tasks &support, std::size_t steps, span<const float> x, span<float> y) const {
        const reptile_tasks view = support.c_view();
        detail::check(reptile_trainer_adapt_predict(get(), &view, steps, x.data(), x.size(), y.data(), y.size()));
    }
    /// Scores query sets after adapting to the support sets for each step count.
    eval_report evaluate(const tasks &support, const tasks &query, const std::vector<std::size_t> &steps) const {
        const reptile_tasks s = support.c_view(), q = query.c_view();
        reptile_eval_report *p = nullptr;
        detail::check(reptile_trainer_evaluate(get(), &s, &q, steps.data(), steps.size(), &p));
        return eval_report(p);
    }
    /// As evaluate, each query point scored by the mean prediction over `query_views` views of
    /// it (the query holds `query_views` blocks of its points; see
    /// reptile_trainer_evaluate_views).
    eval_report evaluate(const tasks &support, const tasks &query, const std::vector<std::size_t> &steps,
                         std::size_t query_views) const {
        const reptile_tasks s = support.c_view(), q = query.c_view();
        reptile_eval_report *p = nullptr;
        detail::check(reptile_trainer_evaluate_views(get(), &s, &q, query_views, steps.data(), steps.size(), &p));
        return eval_report(p);
    }
    /// The paper's sine evaluation on tasks drawn from `sampler`.
    eval_report evaluate_sine(sine_sampler &sampler, std::size_t n_tasks, std::size_t shots,
                              const std::vector<std::size_t> &steps) const {
        reptile_eval_report *p = nullptr;
        detail::check(
            reptile_trainer_evaluate_sine(get(), sampler.get(), n_tasks, shots, steps.data(), steps.size(), &p));
        return eval_report(p);
    }
    std::uint64_t iteration() const {
        std::uint64_t it = 0;
        detail::check(reptile_trainer_iteration(get(), &it));
        return it;
    }
    void set_iteration(std::uint64_t iteration) { detail::check(reptile_trainer_set_iteration(get(), iteration)); }
    /// Statistics of the last step (throws REPTILE_STATUS_INVALID_STATE before the first).
    reptile_step_stats last_stats() const {
        reptile_step_stats s{};
        detail::check(reptile_trainer_last_stats(get(), &s));
        return s;
    }
    float epsilon(std::uint64_t iteration) const {
        float e = 0.0f;
        detail::check(reptile_trainer_epsilon(get(), iteration, &e));
        return e;
    }
    std::size_t threads() const {
        std::size_t n = 0;
        detail::check(reptile_trainer_threads(get(), &n));
        return n;
    }
    /// Where the meta-training steps run: (REPTILE_BACKEND_*, CUDA device ordinal).
    std::pair<reptile_backend, std::uint32_t> backend() const {
        reptile_backend b = REPTILE_BACKEND_CPU;
        std::uint32_t device = 0;
        detail::check(reptile_trainer_backend(get(), &b, &device));
        return {b, device};
    }
    /// Moves the meta-training steps to another back end (throws, and stays, if unavailable).
    void set_backend(reptile_backend b, std::uint32_t cuda_device = 0) {
        detail::check(reptile_trainer_set_backend(get(), b, cuda_device));
    }
    std::size_t num_params() const {
        std::size_t n = 0;
        detail::check(reptile_trainer_num_params(get(), &n));
        return n;
    }
    std::vector<float> params() const {
        std::vector<float> theta(num_params());
        detail::check(reptile_trainer_get_params(get(), theta.data(), theta.size()));
        return theta;
    }
    void set_params(span<const float> theta) {
        detail::check(reptile_trainer_set_params(get(), theta.data(), theta.size()));
    }
    /// A copy of the current model.
    model current_model() const {
        reptile_model *p = nullptr;
        detail::check(reptile_trainer_model(get(), &p));
        return model(p);
    }
    void save(const std::string &path) const { detail::check(reptile_trainer_save(get(), path.c_str())); }

    reptile_trainer *get() const noexcept { return h_.get(); }

  private:
    detail::handle<reptile_trainer, reptile_trainer_free> h_;
};

} // namespace reptile

#endif // REPTILE_HPP
