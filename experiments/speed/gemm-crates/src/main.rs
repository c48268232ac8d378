//! Single-threaded fp32 affine layers `C[M×N] = A[M×K]·W[K×N] + b`:
//! mvp_infer::PackedLinear vs matrixmultiply::sgemm vs gemm::gemm (Parallelism::None).
//! Set QUICK=1 for one tiny batch per case (smoke test only; numbers meaningless).

use std::hint::black_box;
use std::time::Instant;

use mvp_infer::{PackedLinear, Precision};

/// Deterministic pseudo-random values in [-1, 1).
fn fill(v: &mut [f32], mut seed: u64) {
    for x in v.iter_mut() {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *x = ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
    }
}

/// Inputs of one shape, in plain row-major layout.
struct Case {
    m: usize,
    k: usize,
    n: usize,
    a: Vec<f32>, // M×K
    w: Vec<f32>, // K×N
    b: Vec<f32>, // N
}

impl Case {
    fn new(m: usize, k: usize, n: usize) -> Self {
        let (mut a, mut w, mut b) = (vec![0.0; m * k], vec![0.0; k * n], vec![0.0; n]);
        fill(&mut a, 1 + m as u64);
        fill(&mut w, 2 + k as u64);
        fill(&mut b, 3 + n as u64);
        w.iter_mut().for_each(|x| *x /= (k as f32).sqrt());
        Self { m, k, n, a, w, b }
    }
}

fn add_bias(c: &mut [f32], b: &[f32], n: usize) {
    for row in c.chunks_exact_mut(n) {
        for (x, &bb) in row.iter_mut().zip(b) {
            *x += bb;
        }
    }
}

fn mm_forward(cs: &Case, c: &mut [f32]) {
    let (m, k, n) = (cs.m, cs.k, cs.n);
    unsafe {
        matrixmultiply::sgemm(
            m, k, n, 1.0,
            cs.a.as_ptr(), k as isize, 1,
            cs.w.as_ptr(), n as isize, 1,
            0.0,
            c.as_mut_ptr(), n as isize, 1,
        );
    }
    add_bias(c, &cs.b, n);
}

fn gemm_forward(cs: &Case, c: &mut [f32]) {
    let (m, k, n) = (cs.m, cs.k, cs.n);
    unsafe {
        gemm::gemm(
            m, n, k,
            c.as_mut_ptr(), 1, n as isize,
            false,
            cs.a.as_ptr(), 1, k as isize,
            cs.w.as_ptr(), 1, n as isize,
            0.0f32, 1.0f32,
            false, false, false,
            gemm::Parallelism::None,
        );
    }
    add_bias(c, &cs.b, n);
}

/// PackedLinear with its padded input/output buffers (weights packed once here).
struct Packed {
    layer: PackedLinear,
    a: Vec<f32>,
    out: Vec<f32>,
}

impl Packed {
    fn new(cs: &Case) -> Self {
        assert_eq!(cs.m % 8, 0, "PackedLinear needs M a multiple of 8");
        let layer = PackedLinear::new(cs.k, cs.n, &cs.w, &cs.b, Precision::F32);
        let (ks, ns) = (layer.in_stride(), layer.out_stride());
        let mut a = vec![0.0; cs.m * ks];
        for i in 0..cs.m {
            a[i * ks..i * ks + cs.k].copy_from_slice(&cs.a[i * cs.k..(i + 1) * cs.k]);
        }
        let out = vec![0.0; cs.m * ns];
        Self { layer, a, out }
    }
    fn forward(&mut self, m: usize) {
        self.layer.forward_f32(&self.a, m, &mut self.out);
    }
    /// The output as a dense M×N row-major matrix.
    fn dense(&self, m: usize, n: usize) -> Vec<f32> {
        let ns = self.layer.out_stride();
        (0..m).flat_map(|i| self.out[i * ns..i * ns + n].iter().copied()).collect()
    }
}

fn max_abs_diff(x: &[f32], y: &[f32]) -> f32 {
    assert_eq!(x.len(), y.len());
    x.iter().zip(y).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

/// Seconds per call: warm up, calibrate repetitions so a batch lasts ≥ `min_batch` s,
/// then the median over `batches` batches.
fn time_per_call(mut f: impl FnMut(), min_batch: f64, batches: usize) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut reps = 1usize;
    loop {
        let t = Instant::now();
        for _ in 0..reps {
            f();
        }
        let s = t.elapsed().as_secs_f64();
        if s >= min_batch {
            break;
        }
        let scale = if s > 0.0 { (min_batch / s * 1.1).ceil() as usize } else { 10 };
        reps = (reps * scale.clamp(2, 100)).max(reps + 1);
    }
    let mut per_call: Vec<f64> = (0..batches)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            t.elapsed().as_secs_f64() / reps as f64
        })
        .collect();
    per_call.sort_by(|a, b| a.partial_cmp(b).unwrap());
    per_call[per_call.len() / 2]
}

fn main() {
    let quick = std::env::var("QUICK").map(|v| v == "1").unwrap_or(false);
    let (min_batch, batches) = if quick { (0.002, 1) } else { (0.3, 5) };

    println!(
        "PackedLinear kernel: {}",
        PackedLinear::new(8, 8, &[0.0; 64], &[0.0; 8], Precision::F32).kernel()
    );

    // Correctness on one shape.
    {
        let cs = Case::new(64, 256, 256);
        let mut p = Packed::new(&cs);
        p.forward(cs.m);
        let pl = p.dense(cs.m, cs.n);
        let mut c_mm = vec![0.0; cs.m * cs.n];
        mm_forward(&cs, &mut c_mm);
        let mut c_gm = vec![0.0; cs.m * cs.n];
        gemm_forward(&cs, &mut c_gm);
        // Naive f64 reference.
        let mut r = vec![0.0f32; cs.m * cs.n];
        for i in 0..cs.m {
            for j in 0..cs.n {
                let mut s = cs.b[j] as f64;
                for l in 0..cs.k {
                    s += cs.a[i * cs.k + l] as f64 * cs.w[l * cs.n + j] as f64;
                }
                r[i * cs.n + j] = s as f32;
            }
        }
        let d = [
            ("PackedLinear", max_abs_diff(&pl, &r)),
            ("matrixmultiply", max_abs_diff(&c_mm, &r)),
            ("gemm", max_abs_diff(&c_gm, &r)),
        ];
        println!("Correctness, M=64 K=N=256, max |diff| vs f64 reference:");
        for (name, e) in d {
            println!("  {name:<15} {e:.3e}");
        }
        let worst = d.iter().map(|x| x.1).fold(0.0, f32::max);
        assert!(worst < 1e-3, "methods disagree: max abs diff {worst}");
        println!("  OK (all < 1e-3)\n");
    }

    let shapes: [(usize, usize); 7] = [(32, 256), (64, 256), (256, 256), (2048, 256), (64, 512), (256, 512), (2048, 512)];
    println!("Single-threaded fp32 GFLOP/s (2·M·K·N per call, bias included; median of {batches} rounds, the methods in turn, each batch ≥ {min_batch} s)\n");
    println!("| M | K=N | PackedLinear | matrixmultiply 0.3.11 | gemm 0.19.0 |");
    println!("|---:|---:|---:|---:|---:|");
    for (m, kn) in shapes {
        let cs = Case::new(m, kn, kn);
        let flops = 2.0 * (m * kn * kn) as f64;
        let mut p = Packed::new(&cs);
        let mut c = vec![0.0; m * kn];
        // The three methods in turn, one batch each per round (the shared VM's speed drifts).
        let (mut pl, mut mm, mut gm) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..batches {
            pl.push(time_per_call(|| { p.forward(m); black_box(&p.out); }, min_batch, 1));
            mm.push(time_per_call(|| { mm_forward(&cs, &mut c); black_box(&c); }, min_batch, 1));
            gm.push(time_per_call(|| { gemm_forward(&cs, &mut c); black_box(&c); }, min_batch, 1));
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (t_pl, t_mm, t_gm) = (median(pl), median(mm), median(gm));
        let g = |t: f64| flops / t / 1e9;
        println!("| {m} | {kn} | {:.1} | {:.1} | {:.1} |", g(t_pl), g(t_mm), g(t_gm));
    }
}
