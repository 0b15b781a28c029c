//! AES-256-XTS on x86-64 CPUs with VAES and AVX2: the mode of [`super`] in one pass over the
//! data, four blocks per 512-bit instruction where AVX-512 is there, two per 256-bit one
//! elsewhere.
//!
//! Why here and not in a crate: the `aes` crate encrypts a batch of blocks at 7.3 GiB/s on
//! this machine's CPU but leaves the tweaks to the caller, whose extra passes (tweak chain,
//! XOR before, XOR after) halve that (3.5 GiB/s); `xts-mode` calls the cipher once per block
//! (0.5 GiB/s); Debian 12's OpenSSL runs XTS on 128-bit AES-NI (6.5 GiB/s). The CPU's VAES
//! units do twice AES-NI's work per cycle (16.8 against 8.4 GB/s for 14 rounds, measured),
//! and only a loop that keeps data, tweaks and rounds in registers gets it.
//!
//! Only the mode and the key schedule are written here; every AES round is the CPU's
//! instruction, which runs in constant time, and so does everything else here (no table, no
//! branch on data or key). The tests check the key schedule against the `aes` crate block by
//! block, and the sectors against [`super::Xts`]'s portable path, `xts-mode` and IEEE 1619.

use core::arch::x86_64::*;
use core::mem::MaybeUninit;

use zeroize::Zeroize as _;

/// Round keys of AES-256 (FIPS 197 §5.2): 14 rounds, 15 keys.
const NK: usize = 15;

/// Whether this CPU runs the code here: AES-NI, VAES and AVX2 (AMD Zen 3 on, Intel Ice Lake
/// on).
pub(super) fn available() -> bool {
    is_x86_feature_detected!("aes")
        && is_x86_feature_detected!("vaes")
        && is_x86_feature_detected!("avx2")
}

/// Whether it may use 512-bit registers as well (AVX-512: AMD Zen 4 on, Intel Ice Lake on).
fn wide() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("vpclmulqdq")
}

/// The sector lengths the kernels take are multiples of this: the bytes one step of either
/// kernel moves.
pub(super) const STRIDE: usize = 256;

/// How far ahead of the blocks being encrypted to ask for the source bytes.
const PREFETCH: usize = 4096;

/// Sectors whose first tweaks are computed together.
const GROUP: usize = 16;

/// The expanded keys of one XTS key: data key encryption and decryption (FIPS 197 §5.3.5, the
/// equivalent inverse cipher's), tweak key encryption. Wiped when dropped.
pub(super) struct Keys {
    enc: [[u8; 16]; NK],
    dec: [[u8; 16]; NK],
    tweak: [[u8; 16]; NK],
    /// 512-bit registers: 32 of them hold the round keys, the tweaks and the blocks in flight
    /// (16 of 256 bits do not, and spilling halved the speed).
    wide: bool,
}

impl Drop for Keys {
    fn drop(&mut self) {
        self.enc.zeroize();
        self.dec.zeroize();
        self.tweak.zeroize();
    }
}

impl Keys {
    /// The keys of a 64-byte XTS key (data key, then tweak key), or `None` where the CPU lacks
    /// one of the features [`available`] checks.
    pub(super) fn new(key: &[u8; 64]) -> Option<Self> {
        if !available() {
            return None;
        }
        let (k1, k2) = key.split_at(32);
        let mut me = Self {
            enc: [[0; 16]; NK],
            dec: [[0; 16]; NK],
            tweak: [[0; 16]; NK],
            wide: wide(),
        };
        // SAFETY: the CPU has AES-NI (checked above).
        unsafe {
            expand(k1.try_into().expect("32 bytes"), &mut me.enc);
            expand(k2.try_into().expect("32 bytes"), &mut me.tweak);
            inverse(&me.enc, &mut me.dec);
        }
        Some(me)
    }

    /// XTS over the consecutive sectors of `buf`, in place: `sector` bytes each (a multiple of
    /// [`STRIDE`]), the first one logical block `lba`; sectors `skip` holds for are left as
    /// they are.
    pub(super) fn run(
        &self,
        buf: &mut [u8],
        sector: usize,
        lba: u64,
        encrypt: bool,
        skip: &dyn Fn(&[u8]) -> bool,
    ) {
        let p = buf.as_mut_ptr();
        // SAFETY: `p` is valid for `buf.len()` bytes; the same address both ways is allowed.
        unsafe { self.apply(p, p, buf.len(), sector, lba, encrypt, skip) }
    }

    /// Encrypts `src` into `dst` (the same length) as [`Keys::run`] would in place.
    pub(super) fn encrypt_to(&self, src: &[u8], dst: &mut [u8], sector: usize, lba: u64) {
        assert_eq!(src.len(), dst.len());
        // SAFETY: both are valid for `src.len()` bytes, and a `&mut` does not overlap a `&`.
        unsafe {
            let d = dst.as_mut_ptr();
            self.apply(src.as_ptr(), d, src.len(), sector, lba, true, &|_| false);
        }
    }

    /// [`Keys::run`] from `src` into `dst` (the same length): sectors `skip` holds for are
    /// copied as they are. Every byte of `dst` is written.
    pub(super) fn run_into(
        &self,
        src: &[u8],
        dst: &mut [MaybeUninit<u8>],
        sector: usize,
        lba: u64,
        encrypt: bool,
        skip: &dyn Fn(&[u8]) -> bool,
    ) {
        assert_eq!(src.len(), dst.len());
        // SAFETY: both are valid for `src.len()` bytes, and a `&mut` does not overlap a `&`.
        unsafe {
            let d = dst.as_mut_ptr().cast();
            self.apply(src.as_ptr(), d, src.len(), sector, lba, encrypt, skip);
        }
    }

    /// # Safety
    /// `src` readable and `dst` writable for `len` bytes, the same address or not overlapping.
    #[allow(clippy::too_many_arguments)]
    unsafe fn apply(
        &self,
        src: *const u8,
        dst: *mut u8,
        len: usize,
        sector: usize,
        lba: u64,
        encrypt: bool,
        skip: &dyn Fn(&[u8]) -> bool,
    ) {
        assert!(sector.is_multiple_of(STRIDE) && len.is_multiple_of(sector));
        let keys = if encrypt { &self.enc } else { &self.dec };
        let count = len / sector;
        let mut first = [[0u8; 16]; GROUP];
        let mut s = 0;
        while s < count {
            // SAFETY (this and below): `Keys` exists only where `available()` held, and
            // `wide` only where AVX-512 is there too.
            self.first_tweaks(lba.wrapping_add(s as u64), &mut first);
            let group = GROUP.min(count - s);
            // Runs of sectors to treat, within the group.
            let mut a = 0;
            while a < group {
                let at = (s + a) * sector;
                // The slice lives only for the call: nothing writes meanwhile.
                if skip(core::slice::from_raw_parts(src.add(at), sector)) {
                    if !core::ptr::eq(src, dst) {
                        core::ptr::copy_nonoverlapping(src.add(at), dst.add(at), sector);
                    }
                    a += 1;
                    continue;
                }
                let mut b = a + 1;
                while b < group
                    && !skip(core::slice::from_raw_parts(
                        src.add((s + b) * sector),
                        sector,
                    ))
                {
                    b += 1;
                }
                let (from, to, t0s) = (src.add(at), dst.add(at), &first[a..b]);
                if self.wide {
                    sectors_512(keys, t0s, from, to, sector, encrypt);
                } else {
                    sectors_256(keys, t0s, from, to, sector, encrypt);
                }
                a = b;
            }
            s += group;
        }
    }

    /// T_0 of sectors `lba`.. `lba + GROUP - 1`: E_K2(the LBA as a 128-bit little-endian
    /// number), IEEE 1619 §5.3.1, two at a time.
    #[target_feature(enable = "aes,vaes,avx2")]
    unsafe fn first_tweaks(&self, lba: u64, out: &mut [[u8; 16]; GROUP]) {
        let k = broadcast(&self.tweak);
        let mut b = [_mm256_setzero_si256(); GROUP / 2];
        for (i, x) in b.iter_mut().enumerate() {
            let a = lba.wrapping_add(2 * i as u64);
            *x = _mm256_set_epi64x(0, a.wrapping_add(1) as i64, 0, a as i64);
            *x = _mm256_xor_si256(*x, k[0]);
        }
        for rk in &k[1..NK - 1] {
            for x in b.iter_mut() {
                *x = _mm256_aesenc_epi128(*x, *rk);
            }
        }
        for (x, o) in b.iter().zip(out.chunks_exact_mut(2)) {
            let x = _mm256_aesenclast_epi128(*x, k[NK - 1]);
            _mm256_storeu_si256(o.as_mut_ptr().cast(), x);
        }
    }

    /// The same keys on the 256-bit kernel, as on a CPU without AVX-512.
    #[cfg(test)]
    pub(super) fn narrow(mut self) -> Self {
        self.wide = false;
        self
    }

    /// One block with the data key, through the kernel in use: for the tests of the key
    /// schedule (a one-block "sector" whose tweak is zero and whose last round key is the
    /// key: plain AES).
    #[cfg(test)]
    fn block(&self, b: [u8; 16], enc: bool) -> [u8; 16] {
        let keys = if enc { &self.enc } else { &self.dec };
        let mut buf = [0u8; STRIDE];
        buf[..16].copy_from_slice(&b);
        let p = buf.as_mut_ptr();
        // A zero tweak for block 0 (T_j = 0 for all j): E_K(P ^ 0) ^ 0.
        // SAFETY: as in `apply`; `buf` is one stride.
        unsafe {
            if self.wide {
                sectors_512(keys, &[[0; 16]], p, p, STRIDE, enc);
            } else {
                sectors_256(keys, &[[0; 16]], p, p, STRIDE, enc);
            }
        }
        buf[..16].try_into().expect("16 bytes")
    }
}

/// Each round key in both 128-bit halves.
#[inline]
#[target_feature(enable = "avx2")]
fn broadcast(keys: &[[u8; 16]; NK]) -> [__m256i; NK] {
    let mut k = [_mm256_setzero_si256(); NK];
    for (d, s) in k.iter_mut().zip(keys) {
        // SAFETY: `s` is 16 readable bytes.
        *d = _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(s.as_ptr().cast()) });
    }
    k
}

/// Consecutive sectors of XTS with one vector width. Per 16-byte block j of a sector (IEEE
/// 1619 §5.3.1): C_j = E_K1(P_j ^ T_j) ^ T_j with T_j = T_0 * alpha^j; decryption the same
/// with D_K1 (§5.4.1). `$lanes` registers of blocks go through each round together (the units
/// take several cycles per round and start more than one a cycle), the tweaks stay in
/// registers and advance by alpha^(blocks per step), and the final XOR with T_j rides in the
/// last round key (the last round ends by XORing its key). The round keys are loaded once per
/// run of sectors.
macro_rules! sector_kernel {
    ($name:ident, $v:ty, $features:literal, $lanes:literal, zero: $zero:path,
     broadcast: $bcast:path, load: $load:path, store: $store:path, xor: $xor:path,
     enc: $enc:path, enclast: $enclast:path, dec: $dec:path, declast: $declast:path,
     mul: $mul:path, set1: $set1:path, add: $add:path, spread: $spread:expr,
     step: $step:path) => {
        /// # Safety
        /// The CPU features named; `src` readable and `dst` writable for `t0s.len()` sectors
        /// of `sector` bytes (a multiple of the step, `$lanes` registers), the same address
        /// (each step reads before it writes) or not overlapping. `keys` are encryption keys,
        /// or the equivalent inverse cipher's when `!enc`; `t0s` the sectors' first tweaks.
        #[target_feature(enable = $features)]
        unsafe fn $name(
            keys: &[[u8; 16]; NK],
            t0s: &[[u8; 16]],
            src: *const u8,
            dst: *mut u8,
            sector: usize,
            enc: bool,
        ) {
            const W: usize = core::mem::size_of::<$v>();
            const PER: usize = W / 16;
            let mut k = [$zero(); NK];
            for (d, s) in k.iter_mut().zip(keys) {
                *d = $bcast(_mm_loadu_si128(s.as_ptr().cast()));
            }
            for (n, t0) in t0s.iter().enumerate() {
                // T_0 in every lane; register i's lane l holds T_0 * alpha^(PER i + l), each
                // computed from T_0 (independent of each other).
                let t0 = $bcast(_mm_loadu_si128(t0.as_ptr().cast()));
                let mut tw = [t0; $lanes];
                for (i, x) in tw.iter_mut().enumerate() {
                    *x = $mul(t0, $add($spread, $set1((PER * i) as i64)));
                }
                let (src, dst) = (src.add(n * sector), dst.add(n * sector));
                let mut off = 0;
                while off < sector {
                    let mut b = [$zero(); $lanes];
                    let mut last = [$zero(); $lanes];
                    for i in 0..W * $lanes / 64 {
                        let ahead = src.wrapping_add(off + PREFETCH + 64 * i);
                        _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                    }
                    for i in 0..$lanes {
                        b[i] = $xor($load(src.add(off + W * i).cast()), $xor(tw[i], k[0]));
                        last[i] = $xor(k[NK - 1], tw[i]);
                    }
                    if enc {
                        for rk in &k[1..NK - 1] {
                            for x in b.iter_mut() {
                                *x = $enc(*x, *rk);
                            }
                        }
                        for (x, l) in b.iter_mut().zip(&last) {
                            *x = $enclast(*x, *l);
                        }
                    } else {
                        for rk in &k[1..NK - 1] {
                            for x in b.iter_mut() {
                                *x = $dec(*x, *rk);
                            }
                        }
                        for (x, l) in b.iter_mut().zip(&last) {
                            *x = $declast(*x, *l);
                        }
                    }
                    for i in 0..$lanes {
                        $store(dst.add(off + W * i).cast(), b[i]);
                        tw[i] = $step(tw[i]);
                    }
                    off += W * $lanes;
                }
            }
        }
    };
}

sector_kernel!(sectors_256, __m256i, "aes,vaes,avx2", 8,
    zero: _mm256_setzero_si256, broadcast: _mm256_broadcastsi128_si256,
    load: _mm256_loadu_si256, store: _mm256_storeu_si256, xor: _mm256_xor_si256,
    enc: _mm256_aesenc_epi128, enclast: _mm256_aesenclast_epi128,
    dec: _mm256_aesdec_epi128, declast: _mm256_aesdeclast_epi128,
    mul: mul_alpha_256, set1: _mm256_set1_epi64x, add: _mm256_add_epi64, spread: _mm256_set_epi64x(1, 1, 0, 0),
    step: step_256);

sector_kernel!(sectors_512, __m512i, "aes,vaes,avx2,avx512f,avx512bw,vpclmulqdq", 4,
    zero: _mm512_setzero_si512, broadcast: _mm512_broadcast_i32x4,
    load: _mm512_loadu_si512, store: _mm512_storeu_si512, xor: _mm512_xor_si512,
    enc: _mm512_aesenc_epi128, enclast: _mm512_aesenclast_epi128,
    dec: _mm512_aesdec_epi128, declast: _mm512_aesdeclast_epi128,
    mul: mul_alpha_512, set1: _mm512_set1_epi64, add: _mm512_add_epi64,
    spread: _mm512_set_epi64(3, 3, 2, 2, 1, 1, 0, 0), step: step_512);

/// Each 128-bit lane of `t` (an XTS tweak, little-endian) times alpha^n in GF(2^128) modulo
/// x^128 + x^7 + x^2 + x + 1 (IEEE 1619 §5.2), n from `n` (both 64-bit halves of a lane hold
/// the lane's n, 0 <= n <= 56): shift left by n; the n bits shifted out of the low half move
/// into the high half, and the n bits shifted out of the top, c, come back as c * (x^7 + x^2
/// + x + 1) = c ^ c<<1 ^ c<<2 ^ c<<7 (under 2^63). (A shift by 64 gives zero.)
macro_rules! mul_alpha {
    ($name:ident, $v:ty, $features:literal, sllv: $sllv:path, srlv: $srlv:path,
     sub: $sub:path, set1: $set1:path, swap: $swap:ident, low: $low:expr, and: $and:path,
     andnot: $andnot:path, reduce: $reduce:path, xor: $xor:path) => {
        #[inline]
        #[target_feature(enable = $features)]
        fn $name(t: $v, n: $v) -> $v {
            let shifted = $sllv(t, n);
            // What left each 64-bit half, swapped within each 128-bit lane: the low half now
            // holds what left the top, the high half what left the low half.
            let out = $swap::<0b01_00_11_10>($srlv(t, $sub($set1(64), n)));
            let low = $low;
            let c = $and(out, low);
            let into_high = $andnot(low, out);
            $xor($xor(shifted, into_high), $reduce(c))
        }
    };
}

/// c * (x^7 + x^2 + x + 1) = c ^ c<<1 ^ c<<2 ^ c<<7 in the low half of each 128-bit lane, for
/// c under 2^56.
macro_rules! reduce_shifts {
    ($name:ident, $v:ty, $features:literal, slli: $slli:ident, xor: $xor:path) => {
        #[inline]
        #[target_feature(enable = $features)]
        fn $name(c: $v) -> $v {
            $xor($xor(c, $slli::<1>(c)), $xor($slli::<2>(c), $slli::<7>(c)))
        }
    };
}

reduce_shifts!(reduce_256, __m256i, "avx2", slli: _mm256_slli_epi64, xor: _mm256_xor_si256);

reduce_shifts!(reduce_shifts_512, __m512i, "avx512f", slli: _mm512_slli_epi64,
    xor: _mm512_xor_si512);

/// [`reduce_256`] with one carry-less multiplication per lane: fewer instructions where the
/// AES units are idle (the tweak setup), but it shares them, so the loop's step keeps the
/// shifts.
#[inline]
#[target_feature(enable = "avx512f,vpclmulqdq")]
fn reduce_512(c: __m512i) -> __m512i {
    _mm512_clmulepi64_epi128::<0x00>(c, _mm512_set1_epi64(0x87))
}

mul_alpha!(mul_alpha_256, __m256i, "avx2", sllv: _mm256_sllv_epi64, srlv: _mm256_srlv_epi64,
    sub: _mm256_sub_epi64, set1: _mm256_set1_epi64x, swap: _mm256_shuffle_epi32,
    low: _mm256_set_epi64x(0, -1, 0, -1), and: _mm256_and_si256, andnot: _mm256_andnot_si256,
    reduce: reduce_256, xor: _mm256_xor_si256);

mul_alpha!(mul_alpha_512, __m512i, "avx512f,vpclmulqdq", sllv: _mm512_sllv_epi64, srlv: _mm512_srlv_epi64,
    sub: _mm512_sub_epi64, set1: _mm512_set1_epi64, swap: _mm512_shuffle_epi32,
    low: _mm512_set_epi64(0, -1, 0, -1, 0, -1, 0, -1), and: _mm512_and_si512,
    andnot: _mm512_andnot_si512, reduce: reduce_512, xor: _mm512_xor_si512);

/// Each lane times alpha^16 (16 blocks per step on both kernels): a two-byte shift of each
/// 128-bit lane, and the 16 bits shifted out of the top, c, folded back in as c * (x^7 + x^2
/// + x + 1) (under 2^23).
macro_rules! step16 {
    ($name:ident, $v:ty, $features:literal, bslli: $bslli:ident, bsrli: $bsrli:ident,
     reduce: $reduce:path, xor: $xor:path) => {
        #[inline]
        #[target_feature(enable = $features)]
        fn $name(t: $v) -> $v {
            $xor($bslli::<2>(t), $reduce($bsrli::<14>(t)))
        }
    };
}

step16!(step_256, __m256i, "avx2", bslli: _mm256_bslli_epi128, bsrli: _mm256_bsrli_epi128,
    reduce: reduce_256, xor: _mm256_xor_si256);

step16!(step_512, __m512i, "avx512f,avx512bw", bslli: _mm512_bslli_epi128,
    bsrli: _mm512_bsrli_epi128, reduce: reduce_shifts_512, xor: _mm512_xor_si512);

/// The AES-256 key schedule (FIPS 197 §5.2) with AESKEYGENASSIST: words w[i] = w[i-8] ^
/// SubWord(RotWord(w[i-1])) ^ Rcon for i a multiple of 8, w[i-8] ^ SubWord(w[i-1]) for i = 4
/// mod 8, w[i-8] ^ w[i-1] otherwise; four words per round key.
#[target_feature(enable = "aes")]
fn expand(key: &[u8; 32], out: &mut [[u8; 16]; NK]) {
    // w[i-8..i-4] folded: [a0, a0^a1, a0^a1^a2, a0^a1^a2^a3], then XOR the new word's term
    // into all four.
    #[inline]
    #[target_feature(enable = "aes")]
    fn next(prev: __m128i, term: __m128i) -> __m128i {
        let x = _mm_xor_si128(prev, _mm_slli_si128::<4>(prev));
        let x = _mm_xor_si128(x, _mm_slli_si128::<8>(x));
        _mm_xor_si128(x, term)
    }
    // SAFETY: `key` is 32 readable bytes.
    let (mut a, mut b) = unsafe {
        (
            _mm_loadu_si128(key.as_ptr().cast()),
            _mm_loadu_si128(key.as_ptr().add(16).cast()),
        )
    };
    let mut rk = [a, b, a, a, a, a, a, a, a, a, a, a, a, a, a];
    // Dword 3 of AESKEYGENASSIST is RotWord(SubWord(x[3])) ^ Rcon, dword 2 SubWord(x[3]).
    macro_rules! even {
        ($i:literal, $rcon:literal) => {
            a = next(
                a,
                _mm_shuffle_epi32::<0xff>(_mm_aeskeygenassist_si128::<$rcon>(b)),
            );
            rk[$i] = a;
        };
    }
    macro_rules! odd {
        ($i:literal) => {
            b = next(
                b,
                _mm_shuffle_epi32::<0xaa>(_mm_aeskeygenassist_si128::<0>(a)),
            );
            rk[$i] = b;
        };
    }
    even!(2, 0x01);
    odd!(3);
    even!(4, 0x02);
    odd!(5);
    even!(6, 0x04);
    odd!(7);
    even!(8, 0x08);
    odd!(9);
    even!(10, 0x10);
    odd!(11);
    even!(12, 0x20);
    odd!(13);
    even!(14, 0x40);
    for (o, k) in out.iter_mut().zip(rk) {
        // SAFETY: `o` is 16 writable bytes.
        unsafe { _mm_storeu_si128(o.as_mut_ptr().cast(), k) };
    }
}

/// The equivalent inverse cipher's keys (FIPS 197 §5.3.5): the encryption keys in reverse
/// order, the middle ones through InvMixColumns.
#[target_feature(enable = "aes")]
fn inverse(enc: &[[u8; 16]; NK], dec: &mut [[u8; 16]; NK]) {
    for (i, d) in dec.iter_mut().enumerate() {
        let e = &enc[NK - 1 - i];
        if i == 0 || i == NK - 1 {
            *d = *e;
        } else {
            // SAFETY: `e` and `d` are 16 bytes each.
            unsafe {
                let x = _mm_aesimc_si128(_mm_loadu_si128(e.as_ptr().cast()));
                _mm_storeu_si128(d.as_mut_ptr().cast(), x);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes::cipher::{BlockCipherDecrypt as _, BlockCipherEncrypt as _, KeyInit as _};

    fn fill(seed: &mut u64, out: &mut [u8]) {
        out.iter_mut()
            .for_each(|b| *b = super::super::tests::xorshift(seed) as u8);
    }

    #[test]
    fn key_schedule_and_rounds_match_the_aes_crate() {
        if !available() {
            eprintln!("skipped: this CPU has no VAES");
            return;
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200 {
            let mut key = [0u8; 64];
            fill(&mut seed, &mut key);
            let wide = Keys::new(&key).unwrap();
            let narrow = Keys::new(&key).unwrap().narrow();
            let reference = aes::Aes256::new_from_slice(&key[..32]).unwrap();
            let mut block = [0u8; 16];
            fill(&mut seed, &mut block);
            let mut e = aes::Block::from(block);
            reference.encrypt_block(&mut e);
            let mut d = aes::Block::from(block);
            reference.decrypt_block(&mut d);
            for keys in [&wide, &narrow] {
                assert_eq!(keys.block(block, true), <[u8; 16]>::from(e));
                assert_eq!(keys.block(block, false), <[u8; 16]>::from(d));
            }
        }
    }

    #[test]
    fn alpha_powers_match_doubling() {
        if !available() {
            eprintln!("skipped: this CPU has no VAES");
            return;
        }
        let mut seed = 77;
        for _ in 0..1000 {
            let mut four = [0u8; 64];
            fill(&mut seed, &mut four);
            for n in [0i64, 1, 2, 4, 6, 8, 16, 32, 56] {
                let mut got = [0u8; 64];
                // SAFETY: AVX2 is there (`available`), AVX-512 where `wide()`.
                unsafe {
                    let t = mul_alpha_256(
                        _mm256_loadu_si256(four.as_ptr().cast()),
                        _mm256_set1_epi64x(n),
                    );
                    _mm256_storeu_si256(got.as_mut_ptr().cast(), t);
                    if wide() {
                        let t = mul_alpha_512(
                            _mm512_loadu_si512(four.as_ptr().cast()),
                            _mm512_set1_epi64(n),
                        );
                        _mm512_storeu_si512(got.as_mut_ptr().cast(), t);
                    } else {
                        let t = mul_alpha_256(
                            _mm256_loadu_si256(four[32..].as_ptr().cast()),
                            _mm256_set1_epi64x(n),
                        );
                        _mm256_storeu_si256(got[32..].as_mut_ptr().cast(), t);
                    }
                }
                for (lane, g) in four.chunks_exact(16).zip(got.chunks_exact(16)) {
                    let mut want = u128::from_le_bytes(lane.try_into().unwrap());
                    for _ in 0..n {
                        want = super::super::mul_alpha(want);
                    }
                    assert_eq!(g, want.to_le_bytes(), "alpha^{n}");
                }
            }
        }
    }
}

#[cfg(test)]
mod speed {
    use super::*;

    /// `cargo test --release -p backstore --lib -- --ignored vaes_speed --nocapture`
    #[test]
    #[ignore]
    fn vaes_speed() {
        let mut buf = vec![1u8; 128 << 10];
        let wide = Keys::new(&[7; 64]).unwrap();
        let narrow = Keys::new(&[7; 64]).unwrap().narrow();
        for (name, keys) in [("512-bit", &wide), ("256-bit", &narrow)] {
            for (sector, enc) in [(4096, true), (4096, false), (512, true), (512, false)] {
                let t = std::time::Instant::now();
                let n = 20_000;
                for i in 0..n {
                    keys.run(&mut buf, sector, i, enc, &|_| false);
                }
                let s = t.elapsed().as_secs_f64();
                let gib = (n as f64 * buf.len() as f64) / s / (1u64 << 30) as f64;
                eprintln!("{name}, {sector}-byte sectors, encrypt {enc}: {gib:.2} GiB/s");
            }
        }
    }
}
