#!/usr/bin/env python3
"""JAX reference of the sine-wave Reptile workload timed by `reptile bench`.

What it computes (the same math and the same counts as `src/cli/bench.rs`):

* Tasks y = A*sin(x + phi), A ~ U[0.1, 5], phi ~ U[0, 2*pi], each on the 50 grid points
  linspace(-5, 5, 50).
* Model: MLP 1-64-64-1 (widths via --hidden), tanh hidden layers, linear output, MSE loss
  (mean over points and outputs). Parameters laid out as PyTorch nn.Linear (W [out x in],
  b [out]), initialised U(-1/sqrt(in), 1/sqrt(in)). float32 throughout.
* Inner loop per task: k (--inner-steps, default 5) plain SGD steps at lr 0.02 on minibatches
  of b = 10 (--inner-batch) points. The minibatch stream is a permutation of the task's 50
  points consumed in order and reshuffled when exhausted (k=5, b=10: exactly one epoch) --
  the stream `reptile` draws per task (src/meta/inner.rs, `Batcher`).
* Per task, one extra forward pass at theta' on the first minibatch (the loss after
  adaptation); the loss before adaptation comes free from the first inner step's forward.
  Both (meta-batch means) are outputs of the jitted step, so XLA cannot drop that pass.
* Outer (Reptile) step over n (--meta-batch) tasks that all start from theta:
  theta <- theta + eps * mean_i(theta'_i - theta), constant eps = 0.01 (as the bench uses).

How it maps to ours: `reptile bench` samples 8 task batches before timing and cycles through
them; here 8 batches of targets y [n, 50] *and* the minibatch index streams [n, k, b] are
sampled with numpy before timing and cycled (ours draws its shuffles inside the step, from a
per-task ChaCha stream; that costs it a little, not us). Then: compile, warm up for a quarter
of --seconds (at least 0.2 s, like ours), time outer steps for --seconds. Dispatch is
asynchronous with one step in flight (the step after next is only dispatched once the one
before has finished), and the timer stops after `block_until_ready`.

JAX side: `jit` of one outer step = `vmap` over tasks of a `lax.scan` over the k inner steps
(gradients by `jax.value_and_grad`). By default the task axis is sharded over two XLA CPU
devices (XLA_FLAGS=--xla_force_host_platform_device_count=2, set before jax is imported
unless XLA_FLAGS already names a device count; --devices D to change): theta is
replicated, y and the index streams are split along the task axis with a NamedSharding, and
the mean over tasks becomes a cross-device reduction inside the one jitted program. When n
is not divisible by the device count (e.g. n = 1), it runs on one device, unsharded.
--outer-per-call M (default 1) scans M outer steps inside one jitted call, to take Python
dispatch out of the picture for tiny n; the default of 1 is one call per outer step, as ours
makes one `Trainer::step` call per outer step.

FLOP count (identical to `MlpSpec::step_flops` / `MlpSpec::forward_flops` in src/spec.rs):
  forward  F = sum over layers (in, out) of 2*b*in*out + 2*b*out   (matmul + bias add and
               activation/one op per output; the output layer counted the same way)
  step     S = F + sum over layers of (2*b*in*out + b*out)         (dW = dZ^T A, db = sum dZ)
               + sum over layers but the first of (2*b*in*out + 2*b*in) (dA = dZ W, * act')
               + 2 * num_params                                     (theta -= lr * g)
For 1-64-64-1, b = 10: S = 267,296 and F = 87,060.
  task_steps_per_s = n * k * outer_steps / seconds
  gflops = n * (k * S + F) * outer_steps / seconds / 1e9
The last line printed is exactly `task_steps_per_s=<number> gflops=<number>`, as ours.

--check runs a few outer steps, then verifies against plain numpy float64 (hand-written
forward/backward, not autodiff): one inner SGD step of the jitted per-task step function
(the very function scanned in the benchmark) at the current theta, relative error of
theta' - theta (all parameters, 2-norm) <= 1e-4; the same for the whole k-step inner loop of
every task (the vmapped scan); and one whole jitted (sharded) outer step, every element of
theta_new within 1e-3 * max|update| + one float32 ulp of the float64 reference. Prints OK or
exits with status 1.
"""

import argparse
import math
import os
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--meta-batch", type=int, default=32, help="tasks per outer step n")
    p.add_argument("--inner-steps", type=int, default=5, help="inner SGD steps k")
    p.add_argument("--inner-batch", type=int, default=10, help="inner minibatch size b")
    p.add_argument("--seconds", type=float, default=3.0, help="seconds of timed steps")
    p.add_argument("--hidden", type=str, default="64,64", help="hidden widths, comma separated")
    p.add_argument("--devices", type=int, default=2, help="XLA CPU devices to shard tasks over")
    p.add_argument("--outer-per-call", type=int, default=1, help="outer steps per jitted call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check", action="store_true", help="verify against numpy float64 and exit")
    a = p.parse_args()
    if not (math.isfinite(a.seconds) and a.seconds > 0):
        p.error(f"--seconds must be positive, got {a.seconds}")
    for name in ("meta_batch", "inner_steps", "inner_batch", "devices", "outer_per_call"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return a


ARGS = parse_args()
# The device count must be fixed before jax is imported.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={ARGS.devices}"
    ).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

GRID_POINTS = 50
LR = 0.02
EPS = 0.01
N_BATCHES = 8  # pre-sampled task batches cycled through, as ours


# ---------------------------------------------------------------- counts (as src/spec.rs)

def layer_dims(widths):
    return list(zip(widths[:-1], widths[1:]))


def num_params(widths):
    return sum(i * o + o for i, o in layer_dims(widths))


def forward_flops(widths, b):
    return sum(2 * b * i * o + 2 * b * o for i, o in layer_dims(widths))


def step_flops(widths, b):
    f = forward_flops(widths, b)
    for l, (i, o) in enumerate(layer_dims(widths)):
        f += 2 * b * i * o + b * o
        if l > 0:
            f += 2 * b * i * o + 2 * b * i
    return f + 2 * num_params(widths)


# ---------------------------------------------------------------- model and steps (JAX)

def init_params(widths, rng):
    """PyTorch nn.Linear layout and init: W [out, in], b [out], U(-1/sqrt(in), 1/sqrt(in))."""
    params = []
    for i, o in layer_dims(widths):
        bound = 1.0 / math.sqrt(i)
        params.append(rng.uniform(-bound, bound, size=(o, i)).astype(np.float32))
        params.append(rng.uniform(-bound, bound, size=(o,)).astype(np.float32))
    return tuple(params)


def forward(params, x):
    """x [b, in] -> [b, out]; tanh on hidden layers, linear output."""
    h = x
    nl = len(params) // 2
    for l in range(nl):
        w, bias = params[2 * l], params[2 * l + 1]
        h = h @ w.T + bias
        if l + 1 < nl:
            h = jnp.tanh(h)
    return h


def mse(params, x, y):
    return jnp.mean((forward(params, x) - y) ** 2)


def sgd_step(params, xb, yb):
    """One inner SGD step on one task's minibatch; returns (theta', loss before the step)."""
    loss, g = jax.value_and_grad(mse)(params, xb, yb)
    return tuple(p - LR * gp for p, gp in zip(params, g)), loss


def task_inner(theta, y, idx, grid):
    """The inner loop of one task: y [50], idx [k, b] point indices -> (theta', before, after)."""

    def body(p, ix):
        xb = grid[ix][:, None]
        yb = y[ix][:, None]
        p, loss = sgd_step(p, xb, yb)
        return p, loss

    theta_p, losses = jax.lax.scan(body, theta, idx)
    ix0 = idx[0]
    after = mse(theta_p, grid[ix0][:, None], y[ix0][:, None])
    return theta_p, losses[0], after


def outer_step(theta, ys, idx, grid):
    """One Reptile step over n tasks: ys [n, 50], idx [n, k, b]."""
    theta_p, before, after = jax.vmap(task_inner, in_axes=(None, 0, 0, None))(theta, ys, idx, grid)
    new = tuple(t + EPS * jnp.mean(tp - t, axis=0) for t, tp in zip(theta, theta_p))
    return new, jnp.mean(before), jnp.mean(after)


def outer_steps(theta, ys, idx, grid):
    """M outer steps in one call: ys [M, n, 50], idx [M, n, k, b]."""

    def body(t, xs):
        t, before, after = outer_step(t, xs[0], xs[1], grid)
        return t, (before, after)

    theta, (before, after) = jax.lax.scan(body, theta, (ys, idx))
    return theta, before[-1], after[-1]


# ---------------------------------------------------------------- host-side sampling

def sample_batch(rng, n, k, b):
    """Targets [n, 50] and minibatch index streams [n, k, b] (permutations, reshuffled per epoch)."""
    grid = np.linspace(-5.0, 5.0, GRID_POINTS).astype(np.float32)
    amp = rng.uniform(0.1, 5.0, size=(n, 1)).astype(np.float32)
    phase = rng.uniform(0.0, 2 * math.pi, size=(n, 1)).astype(np.float32)
    ys = (amp * np.sin(grid[None, :] + phase)).astype(np.float32)
    epochs = -(-k * b // GRID_POINTS)
    perms = np.stack([
        np.concatenate([rng.permutation(GRID_POINTS) for _ in range(epochs)])[: k * b]
        for _ in range(n)
    ])
    return ys, perms.reshape(n, k, b).astype(np.int32)


# ---------------------------------------------------------------- numpy float64 reference

def np_forward(params, x):
    """Returns the activations of every layer (input first) and the output."""
    acts = [x]
    nl = len(params) // 2
    h = x
    for l in range(nl):
        h = h @ params[2 * l].T + params[2 * l + 1]
        if l + 1 < nl:
            h = np.tanh(h)
        acts.append(h)
    return acts


def np_sgd_step(params, x, y):
    acts = np_forward(params, x)
    out = acts[-1]
    dz = 2.0 * (out - y) / out.size
    nl = len(params) // 2
    grads = [None] * len(params)
    for l in reversed(range(nl)):
        grads[2 * l] = dz.T @ acts[l]
        grads[2 * l + 1] = dz.sum(axis=0)
        if l > 0:
            dz = (dz @ params[2 * l]) * (1.0 - acts[l] ** 2)
    return [p - LR * g for p, g in zip(params, grads)]


def np_outer_step(theta, ys, idx, grid):
    deltas = [np.zeros_like(t) for t in theta]
    for i in range(ys.shape[0]):
        p = [t.copy() for t in theta]
        for s in range(idx.shape[1]):
            ix = idx[i, s]
            p = np_sgd_step(p, grid[ix][:, None], ys[i, ix][:, None])
        for d, pp, t in zip(deltas, p, theta):
            d += pp - t
    return [t + EPS * d / ys.shape[0] for t, d in zip(theta, deltas)]


def rel_err(a_list, b_list):
    a = np.concatenate([np.ravel(v) for v in a_list])
    b = np.concatenate([np.ravel(v) for v in b_list])
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


# ---------------------------------------------------------------- main

def main():
    a = ARGS
    n, k, b, m = a.meta_batch, a.inner_steps, a.inner_batch, a.outer_per_call
    if b > GRID_POINTS:
        sys.exit(f"--inner-batch must be at most {GRID_POINTS}")
    widths = [1] + [int(w) for w in a.hidden.split(",") if w] + [1]
    if widths == [1, 64, 64, 1]:
        assert step_flops(widths, 10) == 267_296 and forward_flops(widths, 10) == 87_060

    devs = jax.devices()
    ndev = len(devs) if n % len(devs) == 0 else 1
    if ndev > 1:
        mesh = Mesh(np.array(devs[:ndev]), ("tasks",))
        rep = NamedSharding(mesh, P())
        # Task axis: axis 0 of one step's arrays, axis 1 of M stacked steps'.
        shard = NamedSharding(mesh, P("tasks") if m == 1 else P(None, "tasks"))
        put = lambda v, s: jax.device_put(v, s)  # noqa: E731
    else:
        rep = shard = None
        put = lambda v, s: jax.device_put(v, devs[0])  # noqa: E731

    fn = outer_step if m == 1 else outer_steps
    if ndev > 1:
        step = jax.jit(fn, in_shardings=(rep, shard, shard, rep), out_shardings=(rep, rep, rep))
    else:
        step = jax.jit(fn)

    rng = np.random.default_rng(a.seed)
    theta0 = init_params(widths, rng)
    grid_np = np.linspace(-5.0, 5.0, GRID_POINTS).astype(np.float32)
    batches = [sample_batch(rng, n, k, b) for _ in range(N_BATCHES)]
    if m == 1:
        host = batches
    else:  # stack M consecutive batches (cycling) per call
        host = [
            tuple(np.stack([batches[(j * m + i) % N_BATCHES][c] for i in range(m)]) for c in (0, 1))
            for j in range(N_BATCHES)
        ]
    dev_batches = [(put(ys, shard), put(ix, shard)) for ys, ix in host]
    theta = tuple(put(t, rep) for t in theta0)
    grid = put(grid_np, rep)

    if a.check:
        return check(step, theta, dev_batches, host, grid, grid_np, m, ndev)

    # compile, then warm up for a quarter of the timed seconds (at least 0.2 s)
    t0 = time.perf_counter()
    out = step(theta, *dev_batches[0], grid)
    jax.block_until_ready(out)
    compile_s = time.perf_counter() - t0
    theta = out[0]
    calls = 1

    def run_for(seconds, theta, calls):
        done = 0
        prev = None
        t = time.perf_counter()
        while time.perf_counter() - t < seconds:
            theta, before, after = step(theta, *dev_batches[calls % N_BATCHES], grid)
            if prev is not None:
                prev.block_until_ready()  # keep one step in flight
            prev = after
            calls += 1
            done += 1
        jax.block_until_ready((theta, before, after))
        return theta, calls, done, time.perf_counter() - t, before, after

    theta, calls, _, _, _, _ = run_for(max(a.seconds / 4.0, 0.2), theta, calls)
    theta, calls, done, secs, before, after = run_for(a.seconds, theta, calls)

    outer = done * m
    flops_per_outer = n * (k * step_flops(widths, b) + forward_flops(widths, b))
    task_steps = outer * n * k / secs
    gflops = outer * flops_per_outer / secs / 1e9
    print("| setting | value |")
    print("|---|---|")
    print(f"| network | {widths} tanh, {num_params(widths)} parameters |")
    print(f"| jax, devices | {jax.__version__}, {ndev} x {devs[0].platform} (tasks sharded: {ndev > 1}) |")
    print(f"| meta-batch n, inner steps k, minibatch | {n}, {k}, {b} |")
    print(f"| outer steps per jitted call | {m} |")
    print(f"| compile (first call) | {compile_s:.2f} s |")
    print(f"| outer steps timed | {outer} in {secs:.3f} s ({secs / outer * 1e6:.1f} µs each) |")
    print(f"| outer steps/s | {outer / secs:.1f} |")
    print(f"| FLOP per outer step | {flops_per_outer} |")
    print(f"| loss before / after adaptation (last step) | {float(before):.4f} / {float(after):.4f} |")
    print(f"task_steps_per_s={task_steps:.0f} gflops={gflops:.3f}")


def check(step, theta, dev_batches, host, grid, grid_np, m, ndev):
    # a few outer steps first, so theta is not the initial point
    for j in range(3):
        theta, _, _ = step(theta, *dev_batches[j % N_BATCHES], grid)
    theta = jax.block_until_ready(theta)
    theta64 = [np.asarray(t, dtype=np.float64) for t in theta]
    ys, idx = host[3 % N_BATCHES]
    if m > 1:  # the first of the stacked outer steps
        ys, idx = ys[0], idx[0]
    ok = True

    # 1. one inner SGD step of the jitted per-task function, for every task of the batch
    one = jax.jit(jax.vmap(sgd_step, in_axes=(None, 0, 0)))
    xb = grid_np[idx[:, 0]][..., None]  # [n, b, 1]
    yb = np.take_along_axis(ys, idx[:, 0], axis=1)[..., None]
    got, _ = one(theta, jnp.asarray(xb), jnp.asarray(yb))
    got = [np.asarray(g, dtype=np.float64) for g in got]
    worst = 0.0
    for i in range(ys.shape[0]):
        ref = np_sgd_step(theta64, xb[i].astype(np.float64), yb[i].astype(np.float64))
        worst = max(worst, rel_err([g[i] - t for g, t in zip(got, theta64)], [r - t for r, t in zip(ref, theta64)]))
    print(f"inner SGD step, rel. error of theta'-theta (worst of {ys.shape[0]} tasks): {worst:.2e} (limit 1e-4)")
    ok &= worst <= 1e-4

    # 2. the k-step inner loop of every task (the vmapped scan of the benchmark, jitted alone)
    inner = jax.jit(jax.vmap(task_inner, in_axes=(None, 0, 0, None)))
    got, _, _ = inner(theta, jnp.asarray(ys), jnp.asarray(idx), jnp.asarray(grid_np))
    got = [np.asarray(g, dtype=np.float64) for g in got]
    worst = 0.0
    for i in range(ys.shape[0]):
        p = theta64
        for s in range(idx.shape[1]):
            ix = idx[i, s]
            p = np_sgd_step(p, grid_np[ix][:, None].astype(np.float64), ys[i, ix][:, None].astype(np.float64))
        worst = max(worst, rel_err([g[i] - t for g, t in zip(got, theta64)], [r - t for r, t in zip(p, theta64)]))
    print(f"{idx.shape[1]}-step inner loop, rel. error of theta'-theta (worst task): {worst:.2e} (limit 1e-4)")
    ok &= worst <= 1e-4

    # 3. whole outer step(s) of the benchmarked jitted call (sharded as benchmarked). The update
    # eps*mean(theta'-theta) is ~1e-4 of theta, so float32 rounding of theta_new alone is ~1e-3
    # of the update: each element must be within 1e-3 of the largest update element plus one
    # float32 ulp of theta_new of the float64 reference.
    new, _, _ = step(theta, *dev_batches[3 % N_BATCHES], grid)
    new = [np.asarray(v, dtype=np.float64) for v in new]
    ys_all, idx_all = host[3 % N_BATCHES]
    if m == 1:
        ys_all, idx_all = ys_all[None], idx_all[None]
    ref = theta64
    for i in range(m):  # the call runs M outer steps
        ref = np_outer_step(ref, ys_all[i].astype(np.float64), idx_all[i], grid_np.astype(np.float64))
    upd = max(float(np.max(np.abs(r - t))) for r, t in zip(ref, theta64))
    within = all(
        np.all(np.abs(v - r) <= 1e-3 * upd + np.spacing(np.abs(r).astype(np.float32)).astype(np.float64))
        for v, r in zip(new, ref)
    )
    e = rel_err([v - t for v, t in zip(new, theta64)], [r - t for r, t in zip(ref, theta64)])
    print(f"outer step ({m} per call, {ndev} device(s)): rel. error of theta_new-theta {e:.2e}, "
          f"every element within 1e-3*max|update| + 1 ulp: {within}")
    ok &= within
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
