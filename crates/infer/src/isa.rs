//! The instruction sets the kernels are written for, which of them this CPU runs, and a cap.
//!
//! Every packed layer, MLP and policy carries the [`Isa`] its kernels use, fixed when it is
//! built: [`Isa::active`] (the best this CPU has, lowered by a process-wide cap that a run sets
//! once from its config) unless the caller names one with `with_isa`. Tests and benchmarks name
//! each ISA in turn ([`Isa::available`]), so a machine with AVX-512 also runs the AVX2 and
//! portable kernels.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// A family of kernels. Within one architecture the order is from the slowest to the fastest
/// (portable < NEON on aarch64; portable < AVX2 < AVX-512 on x86-64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Plain Rust loops that the compiler vectorises for the target's baseline (SSE2 on
    /// x86-64, NEON on aarch64). Correct everywhere, not fast.
    Portable,
    /// aarch64 NEON (every 64-bit ARM CPU): the fp32 product kernel with fused multiply-adds;
    /// the elementwise loops are the portable ones, which the compiler vectorises for NEON.
    Neon,
    /// x86-64 AVX2 + FMA (Intel since Haswell, AMD since Zen 1): fp32 only.
    Avx2,
    /// x86-64 AVX-512F, with the bf16 kernels where the CPU has AVX512-BF16 (and AMX tiles
    /// where it has those).
    Avx512,
}

impl Isa {
    /// Every family.
    pub const ALL: [Isa; 4] = [Isa::Portable, Isa::Neon, Isa::Avx2, Isa::Avx512];

    /// The config and command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Neon => "neon",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// The best family this CPU runs (read from CPUID once).
    pub fn detected() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| Isa::ALL.into_iter().filter(|i| i.supported()).max().unwrap_or(Isa::Portable))
    }

    /// Whether this CPU has the instructions of the family.
    fn supported(self) -> bool {
        match self {
            Isa::Portable => true,
            Isa::Neon => cfg!(target_arch = "aarch64"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Isa::Avx2.supported() && std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 | Isa::Avx512 => false,
        }
    }

    /// The families this CPU runs, slowest first.
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.runs_here()).collect()
    }

    /// Whether this CPU runs the family.
    pub fn runs_here(self) -> bool {
        static RUNS: OnceLock<[bool; 4]> = OnceLock::new();
        RUNS.get_or_init(|| Isa::ALL.map(Isa::supported))[self as usize]
    }

    /// The family new layers use: [`Isa::detected`], lowered to the cap of [`Isa::set_cap`].
    pub fn active() -> Isa {
        match Isa::ALL.get(usize::from(CAP.load(Ordering::Relaxed))) {
            Some(&cap) if cap.runs_here() => cap.min(Isa::detected()),
            _ => Isa::detected(),
        }
    }

    /// Caps the family that layers built from now on use (a family this CPU runs; others are
    /// ignored); `None` lifts the cap. Set once by a run (`engine.isa`) or a benchmark
    /// (`--isa`) before it builds anything; layers already built keep theirs.
    pub fn set_cap(cap: Option<Isa>) {
        let v = cap.map_or(u8::MAX, |c| c as u8);
        CAP.store(v, Ordering::Relaxed);
    }

    /// Whether the bf16 kernels run on this family here: AVX-512 with AVX512-BF16.
    pub fn has_bf16(self) -> bool {
        self == Isa::Avx512 && self.runs_here() && avx512_bf16()
    }
}

static CAP: AtomicU8 = AtomicU8::new(u8::MAX);

fn avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Isa {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Isa::ALL.into_iter().find(|i| i.name() == s).ok_or_else(|| {
            let names: Vec<_> = Isa::ALL.iter().map(|i| i.name()).collect();
            format!("unknown instruction set {s:?}; expected one of {}", names.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_names_list_the_allowed_ones() {
        for isa in Isa::ALL {
            assert_eq!(isa.name().parse::<Isa>().unwrap(), isa);
        }
        let err = "sse".parse::<Isa>().unwrap_err();
        assert!(err.contains("portable, neon, avx2, avx512"), "{err}");
    }

    #[test]
    fn the_portable_family_runs_everywhere_and_available_is_ordered() {
        let all = Isa::available();
        assert_eq!(all[0], Isa::Portable);
        assert_eq!(*all.last().unwrap(), Isa::detected());
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        // One architecture's families only.
        assert!(!(all.contains(&Isa::Neon) && all.contains(&Isa::Avx2)));
    }
}
