//! The forward passes of [`Mlp`]: row tiles through every layer, with the shared inputs' head
//! added per group of rows ([`Mlp::forward_grouped`]).

use super::kernels::{activate, add, layer_norm, round_to_bf16};
use super::{Mlp, TILE_ROWS};
use crate::gemm::{round_up, Precision};

impl Mlp {
    /// Runs the network on the first `rows` rows of the input buffer; returns the output rows
    /// (stride [`Mlp::out_stride`]). Rows go through all layers in tiles of 256 rows, so
    /// a tile's activations stay in the core's cache however many rows there are.
    pub fn forward(&mut self, rows: usize) -> &[f32] {
        assert!(self.shared.is_none(), "an MLP with shared inputs runs forward_grouped");
        self.forward_grouped(rows, rows.max(1))
    }

    /// [`Mlp::forward`] for an MLP [`with_shared_inputs`](Mlp::with_shared_inputs): row `r`
    /// takes the shared inputs of group `r / group`.
    pub fn forward_grouped(&mut self, rows: usize, group: usize) -> &[f32] {
        assert!(rows <= self.rows, "reserve({rows}) first");
        assert!(group > 0, "groups of at least one row");
        let real_groups = rows.max(1).div_ceil(group);
        let rows = round_up(rows.max(1), self.row_block());
        let (in_stride, out_stride) = (self.in_stride(), self.out_stride());
        let last = self.layers.len() - 1;
        let isa = self.isa();
        if let Some(sh) = self.shared.as_mut() {
            let groups = round_up(real_groups, self.layers[0].row_block());
            assert!(groups <= sh.groups, "reserve_shared({real_groups}) first");
            let src = &sh.input[..groups * sh.head.in_stride()];
            let dst = &mut sh.out[..groups * sh.head.out_stride()];
            match self.precision {
                Precision::Bf16 => {
                    round_to_bf16(src, &mut sh.half[..src.len()], isa);
                    sh.head.forward_bf16(&sh.half[..src.len()], groups, dst);
                }
                Precision::F32 => sh.head.forward_f32(src, groups, dst),
            }
        }
        let mut start = 0;
        while start < rows {
            let n = (rows - start).min(TILE_ROWS);
            for i in 0..=last {
                let layer = &self.layers[i];
                let [h0, h1] = &mut self.hidden;
                let (src, dst): (&[f32], &mut [f32]) = match i {
                    0 => (&self.input[start * in_stride..(start + n) * in_stride], h0),
                    _ if i % 2 == 1 => (h0, h1),
                    _ => (h1, h0),
                };
                let src = &src[..n * layer.in_stride()];
                let dst = if i == last {
                    &mut self.output[start * out_stride..(start + n) * out_stride]
                } else {
                    &mut dst[..n * layer.out_stride()]
                };
                let bf16 = self.precision == Precision::Bf16;
                if bf16 {
                    // Hidden layers' bf16 inputs were rounded by the previous layer's epilogue.
                    if i == 0 {
                        round_to_bf16(src, &mut self.half[..src.len()], isa);
                    }
                    layer.forward_bf16(&self.half[..src.len()], n, dst);
                } else {
                    layer.forward_f32(src, n, dst);
                }
                if let (0, Some(sh)) = (i, self.shared.as_ref()) {
                    // Each row's group's share of the first layer (with the bias).
                    let (stride, hs) = (layer.out_stride(), sh.head.out_stride());
                    for (r, row) in dst.chunks_exact_mut(stride).enumerate() {
                        let g = ((start + r) / group).min(real_groups - 1);
                        add(row, &sh.out[g * hs..g * hs + stride], isa);
                    }
                }
                if i < last {
                    // One pass per row while it is in L1: activation, LayerNorm, and for bf16 the
                    // rounding that makes the next layer's input.
                    let (stride, width) = (layer.out_stride(), layer.out_dim());
                    let norm = self.norms[i].as_ref();
                    for (r, row) in dst.chunks_exact_mut(stride).enumerate() {
                        activate(self.activation, row, isa);
                        if let Some((scale, shift)) = norm {
                            layer_norm(&mut row[..width], scale, shift, isa);
                        }
                        if bf16 {
                            round_to_bf16(row, &mut self.half[r * stride..(r + 1) * stride], isa);
                        }
                    }
                }
            }
            start += n;
        }
        &self.output[..rows * out_stride]
    }
}
