//! Acting allocates nothing after the first call: a counting global allocator watches
//! `NativePolicy::act` on a paper-size MVP policy (actor and two critics of 4×512).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use mvp_infer::{Activation, ActorKind, Aggregate, LayerWeights, MlpWeights, NativePolicy, PolicyWeights, Precision};

/// Counts the allocations of the current thread (tests run in parallel threads).
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    ALLOCATIONS.with(|c| c.set(c.get() + 1));
}

fn allocations() -> usize {
    ALLOCATIONS.with(|c| c.get())
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn mlp(widths: &[usize], layer_norm: bool, seed: usize) -> MlpWeights {
    let layers = widths
        .windows(2)
        .enumerate()
        .map(|(i, w)| LayerWeights {
            in_dim: w[0],
            out_dim: w[1],
            weight: (0..w[0] * w[1]).map(|j| (((j * 7919 + seed) % 1000) as f32 / 1000.0 - 0.5) * 0.1).collect(),
            bias: vec![0.01; w[1]],
            norm: (layer_norm && i + 2 < widths.len()).then(|| (vec![1.0; w[1]], vec![0.0; w[1]])),
        })
        .collect();
    MlpWeights { layers, activation: Activation::Gelu }
}

fn policy(kind: ActorKind, precision: Precision) -> NativePolicy {
    let (s, d) = (37, 25);
    let time_cols = if matches!(kind, ActorKind::MeanVelocity { .. }) { 2 } else { 1 };
    let w = PolicyWeights {
        obs_dim: s,
        chunk_dim: d,
        num_samples: 32,
        actor: mlp(&[s + d + time_cols, 512, 512, 512, 512, d], false, 1),
        actor_kind: kind,
        critics: vec![mlp(&[s + d, 512, 512, 512, 512, 1], true, 2), mlp(&[s + d, 512, 512, 512, 512, 1], true, 3)],
        aggregate: Aggregate::Mean,
    };
    NativePolicy::new(&w, precision, 0).expect("policy builds")
}

#[test]
fn acting_allocates_nothing_after_warm_up() {
    let mut precisions = vec![Precision::F32];
    if mvp_infer::has_avx512_bf16() {
        precisions.push(Precision::Bf16);
    }
    for precision in precisions {
        for kind in [ActorKind::MeanVelocity { steps: 1 }, ActorKind::Flow { steps: 10 }] {
            let mut p = policy(kind, precision);
            for batch in [1usize, 16] {
                let obs: Vec<f32> = (0..batch * 37).map(|i| (i % 13) as f32 * 0.1 - 0.6).collect();
                let mut out = vec![0.0; batch * 25];
                p.act(&obs, &mut out); // warm-up: sizes the scratch buffers
                let before = allocations();
                for _ in 0..5 {
                    p.act(&obs, &mut out);
                }
                let after = allocations();
                assert_eq!(after - before, 0, "{kind:?} {precision:?} batch {batch}: allocations while acting");
                assert!(out.iter().all(|x| x.is_finite() && x.abs() <= 1.0), "actions are finite and clipped");
            }
            // A smaller batch after a larger one reuses the buffers too.
            let obs = vec![0.1; 37];
            let mut out = vec![0.0; 25];
            let before = allocations();
            p.act(&obs, &mut out);
            assert_eq!(allocations() - before, 0);
        }
    }
}

#[test]
fn different_noise_gives_different_candidates_and_the_best_is_returned() {
    let mut p = policy(ActorKind::MeanVelocity { steps: 1 }, Precision::F32);
    let obs = vec![0.2; 37];
    let mut out = vec![0.0; 25];
    p.act(&obs, &mut out);
    let (cands, scores) = (p.candidates().to_vec(), p.scores().to_vec());
    let best = (0..32).max_by(|&a, &b| scores[a].total_cmp(&scores[b])).unwrap();
    assert_eq!(&out[..], &cands[best * 25..(best + 1) * 25]);
    assert!(cands[..25] != cands[25..50], "candidates differ");
}
