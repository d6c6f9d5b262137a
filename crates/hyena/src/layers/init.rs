//! Parameter initialisation helpers: PyTorch's module defaults (`nn.Linear`'s `U(±1/√fan_in)` for
//! weight and bias) and normal draws (Box–Muller), from a seeded [`StdRng`]. The distributions are
//! the reference's (safari `src/models/sequence/hyena.py` modules, and the LM re-initialisation
//! `_init_weights` of `long_conv_lm.py`); the random streams are not PyTorch's, so the values
//! differ from a `torch.manual_seed` run.

use rand::rngs::StdRng;
use rand::Rng;

/// Uniform in `[-bound, bound)`.
pub fn uniform(rng: &mut StdRng, n: usize, bound: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-bound..bound)).collect()
}

/// The bound `1/sqrt(fan_in)` of `nn.Linear`'s default init.
pub fn linear_bound(fan_in: usize) -> f32 {
    1.0 / (fan_in.max(1) as f32).sqrt()
}

/// [`linear`]'s weight init in place: `w` (any shape with inputs `fan_in`) `U(±1/sqrt(fan_in))`,
/// drawn in the same order as [`uniform`].
pub fn linear_into(rng: &mut StdRng, w: &mut [f32], fan_in: usize) {
    let bound = linear_bound(fan_in);
    for v in w {
        *v = rng.random_range(-bound..bound);
    }
}

/// Standard normal samples (Box–Muller).
pub fn randn(rng: &mut StdRng, n: usize, std: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
            let u2: f64 = rng.random();
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32 * std
        })
        .collect()
}

/// `nn.Linear(in, out)` default: weight and bias `U(±1/sqrt(in))` (kaiming-uniform with a=√5).
pub fn linear(rng: &mut StdRng, fan_out: usize, fan_in: usize, bias: bool) -> (Vec<f32>, Vec<f32>) {
    let bound = linear_bound(fan_in);
    let w = uniform(rng, fan_out * fan_in, bound);
    let b = if bias {
        uniform(rng, fan_out, bound)
    } else {
        Vec::new()
    };
    (w, b)
}
