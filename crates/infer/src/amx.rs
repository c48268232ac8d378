//! bf16 matrix products on Intel AMX tiles (Sapphire Rapids and later), by inline assembly:
//! Rust's AMX intrinsics are not stable.
//!
//! Eight tile registers hold one 32 × 32 block of C: A in tmm0–1 (16 rows × 32 bf16 each), B in
//! tmm2–3 (16 k-pairs × 16 columns, the pair layout the bf16 panels already have), C in tmm4–7
//! (16 × 16 f32 each). Each step of 32 along K is four `tdpbf16ps`. Linux hands out the tile
//! state only on request (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`), once per
//! process; [`available`] asks for it and reports whether the CPU and kernel allow it.

use std::sync::OnceLock;

/// Rows of one A tile; row blocks of the AMX path are [`ROWS`] = 2 tiles.
const TILE_ROWS: usize = 16;
/// Rows per block of the AMX kernel (the row count must be a multiple of this).
pub const ROWS: usize = 2 * TILE_ROWS;
/// K per tile step (32 bf16 = 64 bytes per A tile row).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const TILE_K: usize = 32;

/// Whether AMX-BF16 can be used in this process (CPU support and the kernel's permission).
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            let max_leaf = std::arch::x86_64::__cpuid(0).eax;
            if max_leaf < 7 {
                return false;
            }
            let edx = std::arch::x86_64::__cpuid_count(7, 0).edx; // leaf 7 exists (checked above)
            let (amx_bf16, amx_tile) = (edx & (1 << 22) != 0, edx & (1 << 24) != 0);
            if !(amx_bf16 && amx_tile) {
                return false;
            }
            const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_long = 18;
            // SAFETY: a plain syscall with integer arguments; it only changes this process's
            // permission to use the AMX state.
            let rc = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) };
            rc == 0
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        {
            false
        }
    })
}

/// The 64-byte tile configuration: palette 1, eight tiles of 16 rows × 64 bytes.
#[repr(C, align(64))]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct TileConfig([u8; 64]);

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
impl TileConfig {
    fn new() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1; // palette
        for t in 0..8 {
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes()); // bytes per row
            c[48 + t] = TILE_ROWS as u8; // rows
        }
        Self(c)
    }
}

/// `out[rows × n] = a[rows × k] · W + bias` with `w` in the bf16 panel layout of
/// [`crate::PackedLinear`] (`[n/32][k/2][32][2]`), `a` bf16 rows of stride `k`, `out` f32 rows of
/// stride `n`; `rows` a multiple of [`ROWS`], `k` and `n` multiples of 32.
///
/// # Safety
/// [`available`] must be true, and the slices must hold `rows·k`, `n·k` and `rows·n` elements.
#[cfg(target_arch = "x86_64")]
pub unsafe fn matmul_bias(a: &[u16], w: &[u16], bias: &[f32], rows: usize, k: usize, n: usize, out: &mut [f32]) {
    use std::arch::asm;
    debug_assert!(rows.is_multiple_of(ROWS) && k.is_multiple_of(TILE_K) && n.is_multiple_of(32));
    debug_assert!(a.len() >= rows * k && w.len() >= n * k && out.len() >= rows * n);
    for row in out[..rows * n].chunks_exact_mut(n) {
        row.copy_from_slice(&bias[..n]);
    }
    let cfg = TileConfig::new();
    asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
    let (a_stride, c_stride, b_stride): (usize, usize, usize) = (k * 2, n * 4, 2 * 32 * 2);
    for p in 0..n / 32 {
        let panel = w.as_ptr().add(p * k * 32);
        for r0 in (0..rows).step_by(ROWS) {
            let c = out.as_mut_ptr().add(r0 * n + p * 32) as *mut u8;
            let c_low = c.add(TILE_ROWS * c_stride);
            asm!(
                "tileloadd tmm4, [{c} + {s}*1]",
                "tileloadd tmm5, [{c} + {s}*1 + 64]",
                "tileloadd tmm6, [{cl} + {s}*1]",
                "tileloadd tmm7, [{cl} + {s}*1 + 64]",
                c = in(reg) c, cl = in(reg) c_low, s = in(reg) c_stride,
                options(nostack, readonly),
            );
            let a0 = a.as_ptr().add(r0 * k) as *const u8;
            let a1 = a0.add(TILE_ROWS * a_stride);
            for kc in (0..k).step_by(TILE_K) {
                let b = panel.add(kc * 32) as *const u8; // k-pairs kc/2.., 64 bf16 per pair row
                asm!(
                    "tileloadd tmm0, [{a0} + {sa}*1]",
                    "tileloadd tmm1, [{a1} + {sa}*1]",
                    "tileloadd tmm2, [{b} + {sb}*1]",
                    "tileloadd tmm3, [{b} + {sb}*1 + 64]",
                    "tdpbf16ps tmm4, tmm0, tmm2",
                    "tdpbf16ps tmm5, tmm0, tmm3",
                    "tdpbf16ps tmm6, tmm1, tmm2",
                    "tdpbf16ps tmm7, tmm1, tmm3",
                    a0 = in(reg) a0.add(kc * 2), a1 = in(reg) a1.add(kc * 2), b = in(reg) b,
                    sa = in(reg) a_stride, sb = in(reg) b_stride,
                    options(nostack, readonly),
                );
            }
            asm!(
                "tilestored [{c} + {s}*1], tmm4",
                "tilestored [{c} + {s}*1 + 64], tmm5",
                "tilestored [{cl} + {s}*1], tmm6",
                "tilestored [{cl} + {s}*1 + 64], tmm7",
                c = in(reg) c, cl = in(reg) c_low, s = in(reg) c_stride,
                options(nostack),
            );
        }
    }
    asm!("tilerelease", options(nostack, nomem));
}
