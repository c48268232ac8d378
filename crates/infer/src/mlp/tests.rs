//! Unit tests of the MLPs: GELU and `exp` accuracy, LayerNorm, and shared inputs against the
//! plain network.

use super::kernels::{activate, exp, gelu, layer_norm};
use super::*;

/// erf by its Maclaurin series in f64 (accurate to ~1e-8 for |x| ≤ 4.3).
fn erf_ref(x: f64) -> f64 {
    let (mut term, mut sum) = (x, x);
    for n in 1..200 {
        term *= -x * x / n as f64;
        sum += term / (2 * n + 1) as f64;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

#[test]
fn gelu_matches_the_exact_definition() {
    for i in -600..=600 {
        let x = i as f64 / 100.0;
        let want = 0.5 * x * (1.0 + erf_ref(x / std::f64::consts::SQRT_2));
        let got = gelu(x as f32) as f64;
        assert!((got - want).abs() < 1e-6 * (1.0 + x.abs()), "gelu({x}) = {got}, want {want}");
    }
}

#[test]
fn vectorised_gelu_matches_the_exact_definition() {
    let xs: Vec<f32> = (-1200..=1200).map(|i| i as f32 / 100.0).collect();
    for isa in Isa::available() {
        let mut ys = xs.clone();
        activate(Activation::Gelu, &mut ys, isa);
        for (&x, &y) in xs.iter().zip(&ys) {
            let x = x as f64;
            let want = 0.5 * x * (1.0 + erf_ref(x.clamp(-6.0, 6.0) / std::f64::consts::SQRT_2));
            assert!((y as f64 - want).abs() < 1e-6 * (1.0 + x.abs()), "{isa}: gelu({x}) = {y}, want {want}");
        }
    }
}

fn weights(dims: &[usize], seed: u32) -> MlpWeights {
    let val = |i: usize, salt: u32| {
        (((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed * 977 + salt) >> 9) % 2001) as f32 / 4000.0 - 0.25
    };
    let layers = dims
        .windows(2)
        .enumerate()
        .map(|(l, w)| LayerWeights {
            in_dim: w[0],
            out_dim: w[1],
            weight: (0..w[0] * w[1]).map(|i| val(i, l as u32)).collect(),
            bias: (0..w[1]).map(|i| val(i, 100 + l as u32)).collect(),
            norm: (l + 2 < dims.len())
                .then(|| ((0..w[1]).map(|i| 1.0 + val(i, 200)).collect(), (0..w[1]).map(|i| val(i, 300)).collect())),
        })
        .collect();
    MlpWeights { layers, activation: Activation::Gelu }
}

/// Splitting off the leading inputs that repeat within groups of rows (an observation and
/// its candidates) gives the plain network's outputs, on every kernel family, also after
/// repacking new weights; a partial last group and padded rows included.
#[test]
fn shared_inputs_give_the_plain_networks_outputs() {
    let (s, d, group, rows): (usize, usize, usize, usize) = (37, 27, 32, 301); // 10 groups, the last partial; two row tiles
    let dims = [s + d, 64, 48, 25];
    for isa in Isa::available() {
        for seed in [1, 2] {
            let w = weights(&dims, seed);
            let mut plain = Mlp::new(&weights(&dims, 9), Precision::F32).with_isa(isa);
            let mut split = Mlp::with_shared_inputs(&weights(&dims, 9), Precision::F32, s).with_isa(isa);
            plain.repack(&w).unwrap();
            split.repack(&w).unwrap();
            let groups = rows.div_ceil(group);
            plain.reserve(rows);
            split.reserve(rows);
            split.reserve_shared(groups);
            let obs = |g: usize, c: usize| ((g * 13 + c * 7) % 17) as f32 / 8.5 - 1.0;
            let own = |r: usize, c: usize| ((r * 5 + c * 3) % 11) as f32 / 5.5 - 1.0;
            let (ps, ss) = (plain.in_stride(), split.in_stride());
            for (r, row) in plain.input_mut(rows).chunks_exact_mut(ps).enumerate() {
                (0..s).for_each(|c| row[c] = obs(r / group, c));
                (0..d).for_each(|c| row[s + c] = own(r, c));
            }
            for (r, row) in split.input_mut(rows).chunks_exact_mut(ss).enumerate() {
                (0..d).for_each(|c| row[c] = own(r, c));
            }
            let hs = split.shared_stride();
            for (g, row) in split.shared_input_mut(groups).chunks_exact_mut(hs).enumerate() {
                (0..s).for_each(|c| row[c] = obs(g, c));
            }
            let want = plain.forward(rows).to_vec();
            let got = split.forward_grouped(rows, group);
            let os = plain.out_stride();
            for r in 0..rows {
                for c in 0..25 {
                    let (g, e) = (got[r * os + c], want[r * os + c]);
                    assert!((g - e).abs() < 1e-5 * (1.0 + e.abs()), "{isa}, row {r}, column {c}: {g} vs {e}");
                }
            }
        }
    }
}

#[test]
fn exp_is_accurate_over_the_range_used() {
    for i in -8000..=8000 {
        let x = i as f32 / 100.0;
        let (got, want) = (exp(x) as f64, (x as f64).exp());
        assert!(((got - want) / want).abs() < 1e-6, "exp({x}) = {got}, want {want}");
    }
}

#[test]
fn layer_norm_standardises() {
    for isa in Isa::available() {
        let mut x: Vec<f32> = (0..64).map(|i| i as f32 * 0.3 - 4.0).collect();
        layer_norm(&mut x, &[1.0; 64], &[0.0; 64], isa);
        let mean = x.iter().sum::<f32>() / 64.0;
        let var = x.iter().map(|v| v * v).sum::<f32>() / 64.0;
        assert!(mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-3, "{isa}: mean {mean}, var {var}");
    }
}
