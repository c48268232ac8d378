//! `mvp bench gemm`: GFLOP/s of one layer's product, native kernels (per family) against
//! libtorch, interleaved.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use mvp_infer::{Isa, Precision};
use mvp_nn::{DeviceChoice, Runtime};
use serde::Serialize;
use tch::{Kind, Tensor};

use super::{percentiles, time_calls};

/// Options of `mvp bench gemm`.
#[derive(Debug, Args)]
pub struct GemmArgs {
    /// Row counts (batch 32 = the N candidates of one observation; 512 = 16 environments).
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,256,512,2048,8192")]
    rows: Vec<usize>,
    /// Inner and output width (the hidden layers: 512).
    #[arg(long, default_value_t = 512)]
    dim: usize,
    /// Seconds of timing per measurement.
    #[arg(long, default_value_t = 0.3)]
    seconds: f64,
    /// Distinct weight matrices cycled through, one per call: 1 keeps the weights in cache;
    /// 12 is the working set of one MVP action at paper size (actor and two critics, 4 layers
    /// each, 12 MB in fp32), which does not fit in L2 and streams from L3 as acting does.
    #[arg(long, default_value_t = 1)]
    matrices: usize,
    /// Kernel families of the native fp32 columns; default every one this CPU runs.
    #[arg(long, value_delimiter = ',')]
    isa: Vec<Isa>,
    /// Write results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct GemmRow {
    rows: usize,
    dim: usize,
    libtorch_f32: f64,
    libtorch_bf16: f64,
    /// GFLOP/s of the native fp32 kernels, per family (its name).
    native_f32: Vec<(String, f64)>,
    native_bf16: Option<f64>,
}

/// GFLOP/s of `f`, which multiplies `rows × dim` by `dim × dim`, over about `seconds`.
fn gflops(rows: usize, dim: usize, seconds: f64, mut f: impl FnMut()) -> f64 {
    let flop = 2.0 * (rows * dim * dim) as f64;
    for _ in 0..3 {
        f();
    }
    let s = Instant::now();
    f();
    let once = s.elapsed().as_secs_f64().max(1e-7);
    let n = ((seconds / once) as usize).clamp(5, 1_000_000);
    let (median, _, _) = percentiles(time_calls(0, n, f));
    flop / (median * 1e-3) / 1e9
}

/// Rounds of `mvp bench gemm`: each engine is timed this many times, in turn.
const ROUNDS: usize = 5;

/// Runs `mvp bench gemm` (one thread, CPU).
pub fn gemm(args: GemmArgs) -> Result<()> {
    Runtime { device: DeviceChoice::Cpu, threads: 1, ..Runtime::default() }.apply()?;
    let d = args.dim;
    let w: Vec<f32> = (0..d * d).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
    let bias = vec![0.0f32; d];
    let m = args.matrices.max(1);
    let isas = if args.isa.is_empty() { Isa::available() } else { args.isa.clone() };
    if let Some(isa) = isas.iter().find(|i| !i.runs_here()) {
        anyhow::bail!("--isa {isa}: this CPU runs up to {}", Isa::detected());
    }
    let packed: Vec<_> = (0..m).map(|_| mvp_infer::PackedLinear::new(d, d, &w, &bias, Precision::F32)).collect();
    let packed16: Option<Vec<_>> = mvp_infer::has_avx512_bf16()
        .then(|| (0..m).map(|_| mvp_infer::PackedLinear::new(d, d, &w, &bias, Precision::Bf16)).collect());
    let wt: Vec<Tensor> = (0..m).map(|_| Tensor::from_slice(&w).view([d as i64, d as i64])).collect();
    let wt16: Vec<Tensor> = wt.iter().map(|t| t.to_kind(Kind::BFloat16)).collect();
    let (stride_in, stride_out) = (packed[0].in_stride(), packed[0].out_stride());
    let next = std::cell::Cell::new(0usize);
    let pick = || {
        next.set((next.get() + 1) % m);
        next.get()
    };
    let mut rows_out = Vec::new();
    for &rows in &args.rows {
        // The kernels compute whole blocks of rows (8 for fp32; bf16 on AMX tiles: 32).
        let r8 = rows.div_ceil(packed[0].row_block()) * packed[0].row_block();
        let block16 = packed16.as_ref().map_or(1, |p| p[0].row_block());
        let r16 = rows.div_ceil(block16) * block16;
        let a: Vec<f32> = (0..r16.max(r8) * stride_in).map(|i| ((i * 31) % 97) as f32 / 97.0 - 0.5).collect();
        let at = Tensor::from_slice(&a[..rows * d]).view([rows as i64, d as i64]);
        let at16 = at.to_kind(Kind::BFloat16);
        let out = vec![0.0f32; r16.max(r8) * stride_out];
        // Every engine measured in turn, ROUNDS times, and the median of each kept: this
        // machine's speed drifts within seconds, and interleaving spreads the drift over all.
        let layers: Vec<Vec<_>> =
            isas.iter().map(|&isa| packed.iter().map(|p| p.clone().with_isa(isa)).collect()).collect();
        let a16: Vec<u16> = a.iter().map(|&x| mvp_infer::to_bf16(x)).collect();
        let out = std::cell::RefCell::new(out);
        let mut engines: Vec<Box<dyn FnMut() + '_>> =
            vec![Box::new(|| drop(at.mm(&wt[pick()]))), Box::new(|| drop(at16.mm(&wt16[pick()])))];
        for l in &layers {
            engines.push(Box::new(|| l[pick()].forward_f32(&a, r8, &mut out.borrow_mut())));
        }
        if let Some(p) = &packed16 {
            engines.push(Box::new(|| p[pick()].forward_bf16(&a16, r16, &mut out.borrow_mut())));
        }
        let mut samples = vec![Vec::new(); engines.len()];
        for _ in 0..ROUNDS {
            for (f, s) in engines.iter_mut().zip(&mut samples) {
                s.push(gflops(rows, d, args.seconds / ROUNDS as f64, &mut **f));
            }
        }
        drop(engines);
        let mut medians = samples.into_iter().map(|s| percentiles(s).0);
        let (libtorch_f32, libtorch_bf16) = (medians.next().unwrap_or(0.0), medians.next().unwrap_or(0.0));
        let native_f32: Vec<(String, f64)> =
            isas.iter().map(|i| (i.to_string(), medians.next().unwrap_or(0.0))).collect();
        let native_bf16 = medians.next();
        tracing::info!("rows {rows}: libtorch {libtorch_f32:.1}, native {native_f32:?} GFLOP/s");
        rows_out.push(GemmRow { rows, dim: d, libtorch_f32, libtorch_bf16, native_f32, native_bf16 });
    }
    println!("GEMM [rows × {d}] · [{d} × {d}], {m} weight matrices cycled, one thread, GFLOP/s (median call)\n");
    let bf16_kernel = packed16.as_ref().map_or("native bf16".to_string(), |p| format!("native {}", p[0].kernel()));
    let native_heads: String = isas.iter().map(|i| format!(" native fp32 {i} |")).collect();
    println!("| rows | libtorch fp32 | libtorch bf16 |{native_heads} {bf16_kernel} | best native / libtorch fp32 |");
    println!("|---|---|---|{}---|---|", "---|".repeat(isas.len()));
    for r in &rows_out {
        let b16 = r.native_bf16.map(|v| format!("{v:.1}")).unwrap_or_else(|| "no AVX512-BF16".into());
        let natives: String = r.native_f32.iter().map(|(_, g)| format!(" {g:.1} |")).collect();
        let best = r.native_f32.iter().map(|(_, g)| *g).fold(0.0, f64::max);
        println!(
            "| {} | {:.1} | {:.1} |{natives} {} | {:.2} |",
            r.rows,
            r.libtorch_f32,
            r.libtorch_bf16,
            b16,
            best / r.libtorch_f32
        );
    }
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_vec_pretty(&rows_out)?)?;
    }
    Ok(())
}
