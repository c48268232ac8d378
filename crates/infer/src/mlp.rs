//! MLPs on packed layers, with their own scratch buffers, and the elementwise kernels.
//!
//! The code: this file (the weights, packing and repacking, the scratch buffers), `forward`
//! (the forward passes), `kernels` (the elementwise kernels, shared with the backward pass)
//! and `tests`.

mod forward;
mod kernels;

use crate::backprop::LayerParams;
use crate::gemm::{round_up, PackedLinear, Precision, MR};
use crate::isa::Isa;

pub(crate) use kernels::{exp, gelu, round_to_bf16, sum};

// Defined in mvp-spec: shared with the training crates.
pub use mvp_spec::Activation;

/// The parameters of one affine layer, as the training code holds them.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerWeights {
    /// Input width.
    pub in_dim: usize,
    /// Output width.
    pub out_dim: usize,
    /// `[in_dim, out_dim]`, row-major (`y = x·W + b`).
    pub weight: Vec<f32>,
    /// `[out_dim]`.
    pub bias: Vec<f32>,
    /// LayerNorm scale and shift `[out_dim]` applied after this layer's activation.
    pub norm: Option<(Vec<f32>, Vec<f32>)>,
}

/// A trained MLP: `Linear → act → [LayerNorm]` per hidden layer, then a final `Linear`.
#[derive(Debug, Clone, PartialEq)]
pub struct MlpWeights {
    /// Layers from input to output.
    pub layers: Vec<LayerWeights>,
    /// Nonlinearity after each hidden layer.
    pub activation: Activation,
}

impl MlpWeights {
    /// Input width.
    pub fn in_dim(&self) -> usize {
        self.layers[0].in_dim
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        self.layers.last().expect("an MLP has layers").out_dim
    }

    /// Multiply-adds per input row.
    pub fn macs(&self) -> usize {
        self.layers.iter().map(|l| l.in_dim * l.out_dim).sum()
    }
}

pub(crate) const LN_EPS: f32 = 1e-5;

/// An MLP ready to run: packed weights and scratch buffers that grow on the first call for a
/// row count and are reused afterwards (no allocation on later calls of the same or fewer rows).
#[derive(Debug, Clone)]
pub struct Mlp {
    layers: Vec<PackedLinear>,
    norms: Vec<Option<(Vec<f32>, Vec<f32>)>>,
    activation: Activation,
    precision: Precision,
    rows: usize,
    input: Vec<f32>,
    hidden: [Vec<f32>; 2],
    output: Vec<f32>,
    half: Vec<u16>,
    /// The first layer's leading inputs, where they repeat over groups of rows.
    shared: Option<SharedInputs>,
}

/// The first layer of an [`Mlp`] split in two for inputs whose first `cols` columns are the
/// same within groups of consecutive rows (an observation and its N candidates): those columns
/// are multiplied once per group (`head`, which holds the bias) and added to every row of the
/// group; the rows' own columns go through `layers[0]` (without a bias).
#[derive(Debug, Clone)]
struct SharedInputs {
    cols: usize,
    head: PackedLinear,
    /// One row per group, stride `head.in_stride()`.
    input: Vec<f32>,
    /// `head`'s output per group, stride `head.out_stride()`.
    out: Vec<f32>,
    half: Vec<u16>,
    /// Groups the buffers hold.
    groups: usize,
    zeros: Vec<f32>,
}

impl Mlp {
    /// Packs `w` for `precision`.
    pub fn new(w: &MlpWeights, precision: Precision) -> Self {
        let layers =
            w.layers.iter().map(|l| PackedLinear::new(l.in_dim, l.out_dim, &l.weight, &l.bias, precision)).collect();
        let norms = w.layers.iter().map(|l| l.norm.clone()).collect();
        Self {
            layers,
            norms,
            activation: w.activation,
            precision,
            rows: 0,
            input: Vec::new(),
            hidden: [Vec::new(), Vec::new()],
            output: Vec::new(),
            half: Vec::new(),
            shared: None,
        }
    }

    /// Packs `w` for inputs whose first `cols` columns repeat within groups of rows
    /// ([`Mlp::forward_grouped`]): those columns are written once per group
    /// ([`Mlp::shared_input_mut`]) and multiplied once per group; [`Mlp::input_mut`] then holds
    /// only the remaining columns of each row. `0 < cols < ` the input width.
    pub fn with_shared_inputs(w: &MlpWeights, precision: Precision, cols: usize) -> Self {
        let first = &w.layers[0];
        assert!(cols > 0 && cols < first.in_dim, "shared columns must leave some of the {} inputs", first.in_dim);
        let o = first.out_dim;
        let zeros = vec![0.0; o];
        let mut mlp = Self::new(w, precision);
        let (head, rest) = first.weight.split_at(cols * o);
        mlp.layers[0] = PackedLinear::new(first.in_dim - cols, o, rest, &zeros, precision);
        let head = PackedLinear::new(cols, o, head, &first.bias, precision);
        mlp.shared =
            Some(SharedInputs { cols, head, input: Vec::new(), out: Vec::new(), half: Vec::new(), groups: 0, zeros });
        mlp
    }

    /// The network with every layer's kernels from `isa` (at most [`Isa::detected`]).
    pub fn with_isa(mut self, isa: Isa) -> Self {
        self.layers.iter_mut().for_each(|l| l.set_isa(isa));
        if let Some(sh) = &mut self.shared {
            sh.head.set_isa(isa);
        }
        self
    }

    /// The family of kernels the network runs.
    pub fn isa(&self) -> Isa {
        self.layers[0].isa()
    }

    /// The products' number format.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Packs new weights of the same architecture in place of the current ones (after a
    /// training step), keeping the scratch buffers.
    pub fn repack(&mut self, w: &MlpWeights) -> Result<(), crate::InferError> {
        let shared_cols = self.shared.as_ref().map_or(0, |s| s.cols);
        let fits = w.layers.len() == self.layers.len()
            && w.activation == self.activation
            && w.layers.iter().zip(&self.layers).enumerate().all(|(i, (l, p))| {
                l.in_dim == p.in_dim() + if i == 0 { shared_cols } else { 0 } && l.out_dim == p.out_dim()
            });
        if !fits {
            return Err(crate::InferError::Shape("repacked weights must keep the network's architecture".into()));
        }
        let views: Vec<LayerParams<'_>> = w
            .layers
            .iter()
            .map(|l| LayerParams {
                weight: &l.weight,
                bias: &l.bias,
                norm: l.norm.as_ref().map(|(s, b)| (s.as_slice(), b.as_slice())),
            })
            .collect();
        self.repack_layers(&views)
    }

    /// [`Mlp::repack`] from borrowed parameters (one per layer, `weight [in, out]`): the
    /// training loop's own buffers, packed without an intermediate copy.
    pub fn repack_layers(&mut self, layers: &[LayerParams<'_>]) -> Result<(), crate::InferError> {
        let shared_cols = self.shared.as_ref().map_or(0, |s| s.cols);
        let fits = layers.len() == self.layers.len()
            && layers.iter().zip(&self.layers).enumerate().all(|(i, (l, p))| {
                let in_dim = p.in_dim() + if i == 0 { shared_cols } else { 0 };
                l.weight.len() == in_dim * p.out_dim()
                    && l.bias.len() == p.out_dim()
                    && l.norm.is_none_or(|(s, b)| s.len() == p.out_dim() && b.len() == p.out_dim())
            });
        if !fits {
            return Err(crate::InferError::Shape("repacked weights must keep the network's architecture".into()));
        }
        for (i, (p, l)) in self.layers.iter_mut().zip(layers).enumerate() {
            match (i, self.shared.as_mut()) {
                (0, Some(sh)) => {
                    let (head, rest) = l.weight.split_at(sh.cols * p.out_dim());
                    sh.head.repack(head, l.bias);
                    p.repack(rest, &sh.zeros);
                }
                _ => p.repack(l.weight, l.bias),
            }
        }
        for (n, l) in self.norms.iter_mut().zip(layers) {
            match (n.as_mut(), l.norm) {
                (Some((scale, shift)), Some((s, b))) => {
                    scale.copy_from_slice(s);
                    shift.copy_from_slice(b);
                }
                (_, norm) => *n = norm.map(|(s, b)| (s.to_vec(), b.to_vec())),
            }
        }
        Ok(())
    }

    /// Row stride of the input buffer (with shared inputs: of the rows' own columns).
    pub fn in_stride(&self) -> usize {
        self.layers[0].in_stride()
    }

    /// Row stride of the shared inputs' buffer ([`Mlp::with_shared_inputs`]).
    pub fn shared_stride(&self) -> usize {
        self.shared.as_ref().map_or(0, |s| s.head.in_stride())
    }

    /// Makes room for `groups` rows of shared inputs; allocates only when `groups` exceeds
    /// every earlier request.
    pub fn reserve_shared(&mut self, groups: usize) {
        let block = self.row_block();
        let Some(sh) = self.shared.as_mut() else { return };
        let groups = round_up(groups.max(1), block);
        if groups <= sh.groups {
            return;
        }
        sh.groups = groups;
        sh.input = vec![0.0; groups * sh.head.in_stride()];
        sh.out = vec![0.0; groups * sh.head.out_stride()];
        if self.precision == Precision::Bf16 {
            sh.half = vec![0; groups * sh.head.in_stride()];
        }
    }

    /// The shared inputs' buffer for `groups` groups (call [`Mlp::reserve_shared`] first):
    /// group `g`'s leading columns start at `g · shared_stride()`.
    pub fn shared_input_mut(&mut self, groups: usize) -> &mut [f32] {
        let sh = self.shared.as_mut().expect("an MLP built with_shared_inputs");
        assert!(groups <= sh.groups, "reserve_shared({groups}) first");
        &mut sh.input[..groups * sh.head.in_stride()]
    }

    /// Rows are computed in blocks of this many: 32 for the AMX tiles of the bf16 path, else
    /// the 8 of the AVX-512 micro-kernels.
    fn row_block(&self) -> usize {
        if self.precision == Precision::Bf16 && self.isa() == Isa::Avx512 && crate::amx::available() {
            crate::amx::ROWS
        } else {
            MR
        }
    }

    /// Row stride of the output.
    pub fn out_stride(&self) -> usize {
        self.layers.last().expect("an MLP has layers").out_stride()
    }

    /// Makes room for `rows` rows (rounded up to the kernel's row block); allocates only when
    /// `rows` exceeds every earlier request.
    pub fn reserve(&mut self, rows: usize) {
        let rows = round_up(rows.max(1), self.row_block());
        if rows <= self.rows {
            return;
        }
        self.rows = rows;
        let widest = self.layers.iter().map(|l| l.out_stride().max(l.in_stride())).max().unwrap_or(0);
        let tile = rows.min(TILE_ROWS);
        self.input = vec![0.0; rows * self.in_stride()];
        self.output = vec![0.0; rows * self.out_stride()];
        self.hidden = [vec![0.0; tile * widest], vec![0.0; tile * widest]];
        if self.precision == Precision::Bf16 {
            self.half = vec![0; tile * widest];
        }
    }

    /// The input buffer for `rows` rows (call [`Mlp::reserve`] first): row `i` starts at
    /// `i · in_stride()`; columns past the input width must stay zero (they are, unless written).
    pub fn input_mut(&mut self, rows: usize) -> &mut [f32] {
        assert!(rows <= self.rows, "reserve({rows}) first");
        let s = self.in_stride();
        &mut self.input[..rows * s]
    }
}

/// Rows per tile of [`Mlp::forward`]: a multiple of every kernel's row block (8, and AMX's 32).
const TILE_ROWS: usize = 256;

#[cfg(test)]
mod tests;
