//! The Hyena operator (Poli et al. 2023, arXiv 2302.10866; spec Sec. 2) as a zoo layer: the
//! same forward and backward as [`HyenaOperator`], with its parameters read from the model's
//! flat buffer (in the operator's registration order, names as the reference's state dict).

use std::cell::RefCell;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::HyenaConfig;
use crate::error::{check_len, Result};
use crate::layers::zoo::{LayerCache, SeqLayer, TensorSpec};
use crate::layers::{HyenaCache, HyenaGradWorkspace, HyenaOperator};
use crate::params::{DType, Init, ParamStore};

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
        let (op, store) =
            ParamStore::build(Init::Zeros, DType::F32, |vb| HyenaOperator::new(cfg, vb))?;
        let specs = store
            .specs()
            .iter()
            .map(|s| TensorSpec::new(&s.name, &s.shape))
            .collect();
        Ok(HyenaLayer { op, specs })
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
        self.op.init(p, &mut StdRng::seed_from_u64(rng.random()));
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
        self.op
            .forward(p, x, b, l, y, cache.get_mut::<HyenaCache>())
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
        let c = cache.get::<HyenaCache>("hyena layer")?;
        // The backward's scratch (several [D, B, L] buffers) is kept per thread: allocated fresh
        // on every call, its first-touch page faults cost about as much as the out_proj GEMMs.
        // A rayon thread waiting inside this backward can steal another training's job that
        // reaches here too (two trainings in one process): then the scratch is in use and
        // that call takes a fresh one instead of panicking on the borrow.
        let mut run = |w: &mut HyenaGradWorkspace| self.op.backward(p, dy, x, c, dx, g, w);
        GRAD_WS.with(|ws| match ws.try_borrow_mut() {
            Ok(mut w) => run(&mut w),
            Err(_) => run(&mut HyenaGradWorkspace::default()),
        })
    }
}
