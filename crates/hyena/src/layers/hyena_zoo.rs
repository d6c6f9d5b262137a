//! The Hyena operator (Poli et al. 2023, arXiv 2302.10866; spec Sec. 2) as a zoo layer: the
//! same forward and backward as [`HyenaOperator`], with its parameters read from the model's
//! flat buffer (in [`HyenaParams`]' visiting order, names as the reference's state dict).

use std::cell::RefCell;

use rand::rngs::StdRng;
use rand::Rng;

use crate::config::HyenaConfig;
use crate::error::{check_len, Result};
use crate::layers::zoo::{LayerCache, SeqLayer, TensorSpec};
use crate::layers::{HyenaCache, HyenaGradWorkspace, HyenaOperator, HyenaParams, Params};

thread_local! {
    /// Backward scratch of the Hyena layers run on this thread (grown to the largest shape seen).
    static GRAD_WS: RefCell<HyenaGradWorkspace> = RefCell::new(HyenaGradWorkspace::default());
}

/// A Hyena operator of order `cfg.order` (kind "hyena").
#[derive(Clone, Debug)]
pub struct HyenaLayer {
    op: HyenaOperator,
    specs: Vec<TensorSpec>,
}

impl HyenaLayer {
    pub fn new(cfg: &HyenaConfig) -> Result<Self> {
        let op = HyenaOperator::new(cfg, 0)?;
        let mut specs = Vec::new();
        op.params
            .visit("", &mut |n, s, _| specs.push(TensorSpec::new(n, s)));
        Ok(HyenaLayer { op, specs })
    }

    /// The flat buffer `p` as the operator's parameter struct.
    fn unflatten(&self, p: &[f32]) -> HyenaParams {
        let mut hp = self.op.zero_grads();
        let mut off = 0;
        hp.visit_mut("", &mut |_, _, d| {
            d.copy_from_slice(&p[off..off + d.len()]);
            off += d.len();
        });
        hp
    }
}

impl SeqLayer for HyenaLayer {
    fn kind(&self) -> &'static str {
        "hyena"
    }
    fn d_model(&self) -> usize {
        self.op.cfg.d_model
    }
    fn mixes_positions(&self) -> bool {
        true
    }
    fn param_specs(&self) -> Vec<TensorSpec> {
        self.specs.clone()
    }
    fn init(&self, p: &mut [f32], rng: &mut StdRng) {
        // The operator's own reference-default init, seeded from `rng`.
        let fresh = HyenaOperator::new(&self.op.cfg, rng.random()).map(|o| o.params);
        if let Ok(fresh) = fresh {
            let mut off = 0;
            fresh.visit("", &mut |_, _, d| {
                p[off..off + d.len()].copy_from_slice(d);
                off += d.len();
            });
        }
    }
    fn forward(
        &self,
        p: &[f32],
        x: &[f32],
        b: usize,
        l: usize,
        y: &mut [f32],
        cache: &mut LayerCache,
    ) -> Result<()> {
        let n: usize = self.specs.iter().map(TensorSpec::numel).sum();
        check_len("hyena layer", "parameters", p.len(), n)?;
        let hp = self.unflatten(p);
        self.op
            .forward_with(&hp, x, b, l, y, cache.get_mut::<HyenaCache>())
    }
    fn backward(
        &self,
        p: &[f32],
        x: &[f32],
        dy: &[f32],
        _b: usize,
        _l: usize,
        cache: &LayerCache,
        dx: &mut [f32],
        g: &mut [f32],
    ) -> Result<()> {
        let hp = self.unflatten(p);
        let c = cache.get::<HyenaCache>("hyena layer")?;
        let mut grads = self.op.zero_grads();
        // The backward's scratch (several [D, B, L] buffers) is kept per thread: allocated fresh
        // on every call, its first-touch page faults cost about as much as the out_proj GEMMs.
        // A rayon thread waiting inside this backward can steal another training's job that
        // reaches here too (two trainings in one process): then the scratch is in use and
        // that call takes a fresh one instead of panicking on the borrow.
        let mut run =
            |w: &mut HyenaGradWorkspace| self.op.backward_with(&hp, dy, x, c, dx, &mut grads, w);
        GRAD_WS.with(|ws| match ws.try_borrow_mut() {
            Ok(mut w) => run(&mut w),
            Err(_) => run(&mut HyenaGradWorkspace::default()),
        })?;
        let mut off = 0;
        grads.visit("", &mut |_, _, d| {
            for (a, b) in g[off..off + d.len()].iter_mut().zip(d) {
                *a += b;
            }
            off += d.len();
        });
        Ok(())
    }
}
