// LLMaaS weight-only int8 linear layers for vLLM's CPU backend: y = x @ (q * scale).T + bias.
//
// Owns the arithmetic of a linear layer whose weights are int8 with one fp32 scale per output channel
// (symmetric), in two modes:
// * weight-only: activations fp32 or bf16, products accumulated in fp32 (bf16 activations are converted to fp32,
//   except on AVX-512 BF16, where the weights are converted to bf16 pairs for ``dpbf16ps``: int8 values are exact
//   in bf16, so both give exact products);
// * dynamic activations (w8a8): each row of x quantized to int8 with its own scale, int32 dot products
//   (AVX-512 VNNI / AVX-VNNI ``dpbusd``, or AVX2 ``maddubs`` + ``madd`` with llama.cpp's sign trick), then scaled.
//
// Packed layout (made by engine/kernels/int8.py's pack_weight): an int8 tensor (blocks, K, 16). Block b holds
// output rows 16b .. 16b+15 (rows past N are zero) as 16*K contiguous bytes: first the K/4 "groups" of 4 k values,
// each group 64 bytes ordered [row][k%4] (one zmm, or two ymm: the layout VNNI's dpbusd reads), then the K%4 tail
// k values, each 16 bytes [row]. A K-loop therefore streams contiguous bytes, and one load serves 16 rows.
//
// Paths, chosen at run time (never by -march: this file is built for the compiler's baseline and each fast
// kernel carries its own target attribute): avx512_bf16, avx512_vnni, avx512, avx2_vnni, avx2 and portable (plain
// C++ the compiler vectorizes for the baseline). bf16 activations on avx512_bf16: a GEMV of bf16 dot products in
// passes of 16 rows, for every M (half the multiply-adds of fp32 ones, and the weights never leave registers).
// Otherwise, up to 16 rows (decode steps, speculation's checks), weight-only: a GEMV that
// dequantizes on the fly and reads the weights once at memory speed, in passes of up to 12 rows (AVX-512) or 6 (AVX2)
// over each block while it is in cache; w8a8 runs its int32 dot products over row tiles for every M. More rows:
// each block is dequantized once into an L1/L2-resident fp32 tile [k][16] and a register-blocked micro-kernel runs
// over the rows. OpenMP threads (torch's thread count) split the blocks. Registered as the torch.library ops
// llmaas::int8_linear / llmaas::int8_paths (what torch.compile traces) and bound as plain functions of the Python
// module this file builds into (the eager fast path).

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/extension.h>
#include <torch/library.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define LLMAAS_X86 1
#endif
#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t kRows = 16;          // output rows per packed block
constexpr int64_t kGroup = 4;          // k values per row in one group of the main part
constexpr int64_t kGroupBytes = kRows * kGroup;
constexpr int64_t kGemvPassRows = 16;  // up to this many x rows: dequantize on the fly (the GEMV), in passes
constexpr int kGemvPass512 = 12;       // rows per GEMV pass, AVX-512 (16 in one pass measured slower: spills)
constexpr int kGemvPass256 = 6;        // rows per GEMV pass, AVX2 (12 of the 16 ymm registers accumulate)
constexpr int64_t kWorkRows = 4;       // a call's work, for kSerialBytes: weight bytes x (rows / this)
constexpr int64_t kChunkRows = 64;     // x rows per task: the rows' copy (fp32, bf16 for bf16 dots) stays in L2
constexpr int64_t kPrefetchBytes = 16384;  // how far ahead of its loads a GEMV prefetches weights (from memory)
constexpr int64_t kSerialBytes = 1 << 18;  // less work than this: one thread, no fork/join

enum Path : int64_t { kPortable = 0, kAvx2 = 1, kAvx2Vnni = 2, kAvx512 = 3, kAvx512Vnni = 4, kAvx512Bf16 = 5 };
const std::array<const char*, 6> kPathNames = {"portable", "avx2", "avx2_vnni", "avx512", "avx512_vnni", "avx512_bf16"};

// One block's work: acc (m x 16, row-major) = x rows (m, stride ldx) . the block's main part (groups of 4 k).
using FpBlock = void (*)(const float* x, int64_t ldx, int64_t m, int64_t groups, const int8_t* w, float* tile,
                         float* acc);
// The same with bf16 rows (raw bf16 bits), for every m up to kChunkRows: no tile.
using BfBlock = void (*)(const uint16_t* x, int64_t ldx, int64_t m, int64_t groups, const int8_t* w, float* acc);
// The same with quantized rows: xq int8, xu = xq + 128 as uint8 (what dpbusd's unsigned operand wants).
using QBlock = void (*)(const int8_t* xq, const uint8_t* xu, int64_t ldx, int64_t m, int64_t groups,
                        const int8_t* w, int32_t* acc);

// ---------------------------------------------------------------------------------------------------
// Portable kernels: a group is transposed to [k][row] so that the row loop is contiguous and vectorizes.

void fp_block_portable(const float* x, int64_t ldx, int64_t m, int64_t groups, const int8_t* w, float* /*tile*/,
                       float* acc) {
  std::fill(acc, acc + m * kRows, 0.0f);
  float wf[kGroup][kRows];
  for (int64_t g = 0; g < groups; ++g) {
    const int8_t* wg = w + g * kGroupBytes;
    for (int64_t r = 0; r < kRows; ++r)
      for (int64_t j = 0; j < kGroup; ++j) wf[j][r] = static_cast<float>(wg[r * kGroup + j]);
    for (int64_t i = 0; i < m; ++i) {
      const float* xi = x + i * ldx + g * kGroup;
      float* ai = acc + i * kRows;
      for (int64_t j = 0; j < kGroup; ++j)
        for (int64_t r = 0; r < kRows; ++r) ai[r] += xi[j] * wf[j][r];
    }
  }
}

void q_block_portable(const int8_t* xq, const uint8_t* /*xu*/, int64_t ldx, int64_t m, int64_t groups,
                      const int8_t* w, int32_t* acc) {
  std::fill(acc, acc + m * kRows, 0);
  int32_t wi[kGroup][kRows];
  for (int64_t g = 0; g < groups; ++g) {
    const int8_t* wg = w + g * kGroupBytes;
    for (int64_t r = 0; r < kRows; ++r)
      for (int64_t j = 0; j < kGroup; ++j) wi[j][r] = wg[r * kGroup + j];
    for (int64_t i = 0; i < m; ++i) {
      const int8_t* xi = xq + i * ldx + g * kGroup;
      int32_t* ai = acc + i * kRows;
      for (int64_t j = 0; j < kGroup; ++j)
        for (int64_t r = 0; r < kRows; ++r) ai[r] += static_cast<int32_t>(xi[j]) * wi[j][r];
    }
  }
}

// The K % 4 tail k values of a block ([k][row] bytes), added to the main part's sums (every path).
template <typename X, typename A>
void add_tail(const X* x, int64_t ldx, int64_t m, int64_t k0, int64_t tail, const int8_t* w, A* acc) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < tail; ++j) {
      const A xv = static_cast<A>(x[i * ldx + k0 + j]);
      for (int64_t r = 0; r < kRows; ++r) acc[i * kRows + r] += xv * static_cast<A>(w[j * kRows + r]);
    }
}

// Calls f(std::integral_constant<int, R>{}) with R = rows (1 <= rows <= Max): a run-time row count as a template
// argument, so that the kernels keep their accumulators in registers.
template <int Max, typename F>
void with_rows(int64_t rows, F&& f) {
  if constexpr (Max > 1) {
    if (rows < Max) return with_rows<Max - 1>(rows, f);
  }
  f(std::integral_constant<int, Max>{});
}

// Calls f(first row, rows as above) over tiles of at most Max of the m rows.
template <int Max, typename F>
void over_tiles(int64_t m, F&& f) {
  for (int64_t i = 0; i < m; i += Max) with_rows<Max>(std::min<int64_t>(Max, m - i), [&](auto rows) { f(i, rows); });
}

#if defined(LLMAAS_X86)

#define LLMAAS_AVX2 __attribute__((target("avx2,fma")))
#define LLMAAS_AVX2_VNNI __attribute__((target("avx2,fma,avxvnni")))
#define LLMAAS_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma")))
#define LLMAAS_AVX512_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")))
#define LLMAAS_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512bf16,avx2,fma")))

inline int32_t load4(const void* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// ---------------------------------------------------------------------------------------------------
// AVX-512: a group is one zmm, 16 int32 lanes = 16 rows x 4 k bytes; byte j of every lane, sign-extended, is
// srai(slli(v, 24 - 8j), 24).

template <int J>
LLMAAS_AVX512 inline __m512 byte_lane512(__m512i v) {
  if constexpr (J == 3) {
    return _mm512_cvtepi32_ps(_mm512_srai_epi32(v, 24));
  } else {
    return _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(v, 24 - 8 * J), 24));
  }
}

// A GEMV pass's accumulators: Q partial sums for each of M rows, zeroed, then stored as one sum per row.
template <int M, int Q>
LLMAAS_AVX512 inline void zero_sums512(__m512 (&a)[M][Q]) {
  for (int i = 0; i < M; ++i)
    for (int q = 0; q < Q; ++q) a[i][q] = _mm512_setzero_ps();
}

template <int M, int Q>
LLMAAS_AVX512 inline void store_sums512(__m512 (&a)[M][Q], float* acc) {
  for (int i = 0; i < M; ++i) {
    __m512 s = a[i][0];
    for (int q = 1; q < Q; ++q) s = _mm512_add_ps(s, a[i][q]);
    _mm512_storeu_ps(acc + i * kRows, s);
  }
}

// Group g of a block (16 rows x 4 k bytes), the weights kPrefetchBytes ahead asked for from memory.
LLMAAS_AVX512 inline __m512i load_group512(const int8_t* w, int64_t g) {
  _mm_prefetch(reinterpret_cast<const char*>(w + g * kGroupBytes + kPrefetchBytes), _MM_HINT_T0);
  return _mm512_loadu_si512(w + g * kGroupBytes);
}

// Q accumulators per row (the k lanes j spread over them) keep at least 8 FMA chains in flight; a pass of up to 12
// rows holds its accumulators, the 4 dequantized lanes and a broadcast in the 32 zmm registers.
template <int M>
LLMAAS_AVX512 void gemv512(const float* x, int64_t ldx, int64_t groups, const int8_t* w, float* acc) {
  constexpr int Q = M <= 2 ? 4 : (M <= 4 ? 2 : 1);
  __m512 a[M][Q];
  zero_sums512(a);
  for (int64_t g = 0; g < groups; ++g) {
    const __m512i v = load_group512(w, g);
    const __m512 wl[kGroup] = {byte_lane512<0>(v), byte_lane512<1>(v), byte_lane512<2>(v), byte_lane512<3>(v)};
    for (int i = 0; i < M; ++i) {
      const float* xi = x + i * ldx + g * kGroup;
      for (int j = 0; j < kGroup; ++j) a[i][j % Q] = _mm512_fmadd_ps(_mm512_set1_ps(xi[j]), wl[j], a[i][j % Q]);
    }
  }
  store_sums512(a, acc);
}

template <int M>
LLMAAS_AVX512 void tile512(const float* x, int64_t ldx, int64_t kk, const float* tile, float* acc) {
  __m512 a[M];
  for (int i = 0; i < M; ++i) a[i] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kk; ++k) {
    const __m512 wv = _mm512_loadu_ps(tile + k * kRows);
    for (int i = 0; i < M; ++i) a[i] = _mm512_fmadd_ps(_mm512_set1_ps(x[i * ldx + k]), wv, a[i]);
  }
  for (int i = 0; i < M; ++i) _mm512_storeu_ps(acc + i * kRows, a[i]);
}

LLMAAS_AVX512 void fp_block_avx512(const float* x, int64_t ldx, int64_t m, int64_t groups, const int8_t* w,
                                   float* tile, float* acc) {
  if (m <= kGemvPassRows) {
    return over_tiles<kGemvPass512>(m, [&](int64_t i, auto rows) {
      gemv512<decltype(rows)::value>(x + i * ldx, ldx, groups, w, acc + i * kRows);
    });
  }
  for (int64_t g = 0; g < groups; ++g) {
    const __m512i v = _mm512_loadu_si512(w + g * kGroupBytes);
    float* t = tile + g * kGroupBytes;
    _mm512_storeu_ps(t, byte_lane512<0>(v));
    _mm512_storeu_ps(t + kRows, byte_lane512<1>(v));
    _mm512_storeu_ps(t + 2 * kRows, byte_lane512<2>(v));
    _mm512_storeu_ps(t + 3 * kRows, byte_lane512<3>(v));
  }
  const int64_t kk = groups * kGroup;
  over_tiles<12>(m, [&](int64_t i, auto rows) {
    tile512<decltype(rows)::value>(x + i * ldx, ldx, kk, tile, acc + i * kRows);
  });
}

// bf16 activations with AVX-512 BF16: dpbf16ps adds, per fp32 lane, the products of one bf16 pair of x (k, k+1)
// with the lane's pair of weights. A group's 4 k lanes become two vectors of pairs: each lane's int8 value as fp32
// (an integer of at most 8 significant bits: its top 16 bits are that value in bf16, exactly), k in the low half
// of a lane, k+1 in the high. A pass holds up to 16 rows' accumulators (two per row, one per pair, up to 8 rows).
LLMAAS_AVX512_BF16 inline __m512bh bf16_pairs(__m512 low, __m512 high) {
  return (__m512bh)_mm512_mask_blend_epi16(0xAAAAAAAAu, _mm512_srli_epi32(_mm512_castps_si512(low), 16),
                                           _mm512_castps_si512(high));
}

template <int M>
LLMAAS_AVX512_BF16 void gemv512_bf16(const uint16_t* x, int64_t ldx, int64_t groups, const int8_t* w, float* acc) {
  constexpr int Q = M <= 8 ? 2 : 1;
  __m512 a[M][Q];
  zero_sums512(a);
  for (int64_t g = 0; g < groups; ++g) {
    const __m512i v = load_group512(w, g);
    const __m512bh pairs[2] = {bf16_pairs(byte_lane512<0>(v), byte_lane512<1>(v)),
                               bf16_pairs(byte_lane512<2>(v), byte_lane512<3>(v))};
    for (int i = 0; i < M; ++i) {
      const uint16_t* xi = x + i * ldx + g * kGroup;
      for (int p = 0; p < 2; ++p)
        a[i][p % Q] = _mm512_dpbf16_ps(a[i][p % Q], pairs[p], (__m512bh)_mm512_set1_epi32(load4(xi + 2 * p)));
    }
  }
  store_sums512(a, acc);
}

LLMAAS_AVX512_BF16 void bf_block_avx512(const uint16_t* x, int64_t ldx, int64_t m, int64_t groups, const int8_t* w,
                                        float* acc) {
  over_tiles<16>(m, [&](int64_t i, auto rows) {
    gemv512_bf16<decltype(rows)::value>(x + i * ldx, ldx, groups, w, acc + i * kRows);
  });
}

// w8a8 with VNNI: dpbusd(unsigned xu = xq + 128, signed w) = x.w + 128 * rowsum(w). The row sums are one more
// dpbusd (of ones) per group, taken while the first tile of rows runs (First) and subtracted from every tile.
// One or two rows: two accumulators per row (even and odd groups) hide dpbusd's latency.
template <int M, bool First>
LLMAAS_AVX512_VNNI void qtile512(const uint8_t* xu, int64_t ldx, int64_t groups, const int8_t* w, __m512i& bias,
                                 int32_t* acc) {
  constexpr int P = M <= 2 ? 2 : 1;
  const __m512i ones = _mm512_set1_epi8(1);
  __m512i a[M][P], sums[P];
  for (int p = 0; p < P; ++p) {
    sums[p] = _mm512_setzero_si512();
    for (int i = 0; i < M; ++i) a[i][p] = _mm512_setzero_si512();
  }
  int64_t g = 0;
  for (; g + P <= groups; g += P)
    for (int p = 0; p < P; ++p) {
      const __m512i v = _mm512_loadu_si512(w + (g + p) * kGroupBytes);
      if constexpr (First) sums[p] = _mm512_dpbusd_epi32(sums[p], ones, v);
      for (int i = 0; i < M; ++i)
        a[i][p] = _mm512_dpbusd_epi32(a[i][p], _mm512_set1_epi32(load4(xu + i * ldx + (g + p) * kGroup)), v);
    }
  for (; g < groups; ++g) {
    const __m512i v = _mm512_loadu_si512(w + g * kGroupBytes);
    if constexpr (First) sums[0] = _mm512_dpbusd_epi32(sums[0], ones, v);
    for (int i = 0; i < M; ++i)
      a[i][0] = _mm512_dpbusd_epi32(a[i][0], _mm512_set1_epi32(load4(xu + i * ldx + g * kGroup)), v);
  }
  if constexpr (First) {
    for (int p = 1; p < P; ++p) sums[0] = _mm512_add_epi32(sums[0], sums[p]);
    bias = _mm512_slli_epi32(sums[0], 7);
  }
  for (int i = 0; i < M; ++i) {
    for (int p = 1; p < P; ++p) a[i][0] = _mm512_add_epi32(a[i][0], a[i][p]);
    _mm512_storeu_si512(acc + i * kRows, _mm512_sub_epi32(a[i][0], bias));
  }
}

LLMAAS_AVX512_VNNI void q_block_avx512_vnni(const int8_t* /*xq*/, const uint8_t* xu, int64_t ldx, int64_t m,
                                            int64_t groups, const int8_t* w, int32_t* acc) {
  __m512i bias = _mm512_setzero_si512();
  over_tiles<8>(m, [&](int64_t i, auto rows) {
    constexpr int R = decltype(rows)::value;
    if (i == 0) {
      qtile512<R, true>(xu, ldx, groups, w, bias, acc);
    } else {
      qtile512<R, false>(xu + i * ldx, ldx, groups, w, bias, acc + i * kRows);
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// AVX2: a group is two ymm (rows 0-7, rows 8-15), each 8 int32 lanes = 8 rows x 4 k bytes.

template <int J>
LLMAAS_AVX2 inline __m256 byte_lane256(__m256i v) {
  if constexpr (J == 3) {
    return _mm256_cvtepi32_ps(_mm256_srai_epi32(v, 24));
  } else {
    return _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(v, 24 - 8 * J), 24));
  }
}

template <int J, int M, int P>
LLMAAS_AVX2 inline void gemv256_step(const float* x, int64_t ldx, __m256i lo, __m256i hi, __m256 (&a)[M][2][P]) {
  const __m256 wl = byte_lane256<J>(lo), wh = byte_lane256<J>(hi);
  for (int i = 0; i < M; ++i) {
    const __m256 xv = _mm256_set1_ps(x[i * ldx + J]);
    a[i][0][J % P] = _mm256_fmadd_ps(xv, wl, a[i][0][J % P]);
    a[i][1][J % P] = _mm256_fmadd_ps(xv, wh, a[i][1][J % P]);
  }
}

template <int M>
LLMAAS_AVX2 void gemv256(const float* x, int64_t ldx, int64_t groups, const int8_t* w, float* acc) {
  constexpr int P = M <= 2 ? 2 : 1;  // independent accumulators per output vector (FMA latency)
  __m256 a[M][2][P];
  for (int i = 0; i < M; ++i)
    for (int h = 0; h < 2; ++h)
      for (int p = 0; p < P; ++p) a[i][h][p] = _mm256_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    const int8_t* wg = w + g * kGroupBytes;
    _mm_prefetch(reinterpret_cast<const char*>(wg + kPrefetchBytes), _MM_HINT_T0);
    const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wg));
    const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wg + kGroupBytes / 2));
    const float* xg = x + g * kGroup;
    gemv256_step<0, M, P>(xg, ldx, lo, hi, a);
    gemv256_step<1, M, P>(xg, ldx, lo, hi, a);
    gemv256_step<2, M, P>(xg, ldx, lo, hi, a);
    gemv256_step<3, M, P>(xg, ldx, lo, hi, a);
  }
  for (int i = 0; i < M; ++i)
    for (int h = 0; h < 2; ++h) {
      __m256 s = a[i][h][0];
      for (int p = 1; p < P; ++p) s = _mm256_add_ps(s, a[i][h][p]);
      _mm256_storeu_ps(acc + i * kRows + h * 8, s);
    }
}

template <int M>
LLMAAS_AVX2 void tile256(const float* x, int64_t ldx, int64_t kk, const float* tile, float* acc) {
  __m256 a[M][2];
  for (int i = 0; i < M; ++i) a[i][0] = a[i][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kk; ++k) {
    const __m256 wl = _mm256_loadu_ps(tile + k * kRows), wh = _mm256_loadu_ps(tile + k * kRows + 8);
    for (int i = 0; i < M; ++i) {
      const __m256 xv = _mm256_set1_ps(x[i * ldx + k]);
      a[i][0] = _mm256_fmadd_ps(xv, wl, a[i][0]);
      a[i][1] = _mm256_fmadd_ps(xv, wh, a[i][1]);
    }
  }
  for (int i = 0; i < M; ++i) {
    _mm256_storeu_ps(acc + i * kRows, a[i][0]);
    _mm256_storeu_ps(acc + i * kRows + 8, a[i][1]);
  }
}

LLMAAS_AVX2 void fp_block_avx2(const float* x, int64_t ldx, int64_t m, int64_t groups, const int8_t* w,
                               float* tile, float* acc) {
  if (m <= kGemvPassRows) {
    return over_tiles<kGemvPass256>(m, [&](int64_t i, auto rows) {
      gemv256<decltype(rows)::value>(x + i * ldx, ldx, groups, w, acc + i * kRows);
    });
  }
  for (int64_t g = 0; g < groups; ++g) {
    const int8_t* wg = w + g * kGroupBytes;
    const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wg));
    const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wg + kGroupBytes / 2));
    float* t = tile + g * kGroupBytes;
    _mm256_storeu_ps(t, byte_lane256<0>(lo));
    _mm256_storeu_ps(t + 8, byte_lane256<0>(hi));
    _mm256_storeu_ps(t + kRows, byte_lane256<1>(lo));
    _mm256_storeu_ps(t + kRows + 8, byte_lane256<1>(hi));
    _mm256_storeu_ps(t + 2 * kRows, byte_lane256<2>(lo));
    _mm256_storeu_ps(t + 2 * kRows + 8, byte_lane256<2>(hi));
    _mm256_storeu_ps(t + 3 * kRows, byte_lane256<3>(lo));
    _mm256_storeu_ps(t + 3 * kRows + 8, byte_lane256<3>(hi));
  }
  const int64_t kk = groups * kGroup;
  over_tiles<6>(m, [&](int64_t i, auto rows) {
    tile256<decltype(rows)::value>(x + i * ldx, ldx, kk, tile, acc + i * kRows);
  });
}

// w8a8 on AVX2 without VNNI (llama.cpp's trick): maddubs wants an unsigned operand, so multiply |x| by w carrying
// x's sign (sign_epi8); |x|, |w| <= 127 keeps maddubs' int16 pair sums from saturating.
template <int M>
LLMAAS_AVX2 void qtile256(const int8_t* xq, int64_t ldx, int64_t groups, const int8_t* w, int32_t* acc) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i a[M][2];
  for (int i = 0; i < M; ++i) a[i][0] = a[i][1] = _mm256_setzero_si256();
  for (int64_t g = 0; g < groups; ++g) {
    const int8_t* wg = w + g * kGroupBytes;
    const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wg));
    const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wg + kGroupBytes / 2));
    for (int i = 0; i < M; ++i) {
      const __m256i xv = _mm256_set1_epi32(load4(xq + i * ldx + g * kGroup));
      const __m256i ax = _mm256_abs_epi8(xv);
      const __m256i pl = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(lo, xv));
      const __m256i ph = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(hi, xv));
      a[i][0] = _mm256_add_epi32(a[i][0], _mm256_madd_epi16(pl, ones));
      a[i][1] = _mm256_add_epi32(a[i][1], _mm256_madd_epi16(ph, ones));
    }
  }
  for (int i = 0; i < M; ++i) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + i * kRows), a[i][0]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + i * kRows + 8), a[i][1]);
  }
}

LLMAAS_AVX2 void q_block_avx2(const int8_t* xq, const uint8_t* /*xu*/, int64_t ldx, int64_t m, int64_t groups,
                              const int8_t* w, int32_t* acc) {
  over_tiles<4>(m, [&](int64_t i, auto rows) {
    qtile256<decltype(rows)::value>(xq + i * ldx, ldx, groups, w, acc + i * kRows);
  });
}

// w8a8 with AVX-VNNI (256-bit dpbusd): the AVX-512 VNNI scheme on two ymm (rows 0-7, 8-15).
template <int M, bool First>
LLMAAS_AVX2_VNNI void qtile256_vnni(const uint8_t* xu, int64_t ldx, int64_t groups, const int8_t* w,
                                    __m256i (&bias)[2], int32_t* acc) {
  const __m256i ones = _mm256_set1_epi8(1);
  __m256i a[M][2], sums[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
  for (int i = 0; i < M; ++i) a[i][0] = a[i][1] = _mm256_setzero_si256();
  for (int64_t g = 0; g < groups; ++g) {
    const int8_t* wg = w + g * kGroupBytes;
    const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wg));
    const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wg + kGroupBytes / 2));
    if constexpr (First) {
      sums[0] = _mm256_dpbusd_avx_epi32(sums[0], ones, lo);
      sums[1] = _mm256_dpbusd_avx_epi32(sums[1], ones, hi);
    }
    for (int i = 0; i < M; ++i) {
      const __m256i xv = _mm256_set1_epi32(load4(xu + i * ldx + g * kGroup));
      a[i][0] = _mm256_dpbusd_avx_epi32(a[i][0], xv, lo);
      a[i][1] = _mm256_dpbusd_avx_epi32(a[i][1], xv, hi);
    }
  }
  if constexpr (First) {
    bias[0] = _mm256_slli_epi32(sums[0], 7);
    bias[1] = _mm256_slli_epi32(sums[1], 7);
  }
  for (int i = 0; i < M; ++i) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + i * kRows), _mm256_sub_epi32(a[i][0], bias[0]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + i * kRows + 8), _mm256_sub_epi32(a[i][1], bias[1]));
  }
}

LLMAAS_AVX2_VNNI void q_block_avx2_vnni(const int8_t* /*xq*/, const uint8_t* xu, int64_t ldx, int64_t m,
                                        int64_t groups, const int8_t* w, int32_t* acc) {
  __m256i bias[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
  over_tiles<6>(m, [&](int64_t i, auto rows) {
    constexpr int R = decltype(rows)::value;
    if (i == 0) {
      qtile256_vnni<R, true>(xu, ldx, groups, w, bias, acc);
    } else {
      qtile256_vnni<R, false>(xu + i * ldx, ldx, groups, w, bias, acc + i * kRows);
    }
  });
}

#endif  // LLMAAS_X86

// ---------------------------------------------------------------------------------------------------
// Run-time choice of the path.

bool path_supported(int64_t path) {
#if defined(LLMAAS_X86)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl");
  switch (path) {
    case kPortable: return true;
    case kAvx2: return avx2;
    case kAvx2Vnni: return avx2 && __builtin_cpu_supports("avxvnni");
    case kAvx512: return avx512;
    case kAvx512Vnni: return avx512 && __builtin_cpu_supports("avx512vnni");
    case kAvx512Bf16: return avx512 && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bf16");
    default: return false;
  }
#else
  return path == kPortable;
#endif
}

struct Kernels {
  FpBlock fp;
  QBlock q;
  BfBlock bf;  // bf16 activations' own kernel, where the path has one
};

Kernels kernels_for(int64_t path) {
  TORCH_CHECK(path >= 0 && path < static_cast<int64_t>(kPathNames.size()), "int8_linear: unknown path ", path);
  TORCH_CHECK(path_supported(path), "int8_linear: this CPU cannot run the ", kPathNames[path], " path");
  switch (path) {
#if defined(LLMAAS_X86)
    case kAvx2: return {fp_block_avx2, q_block_avx2, nullptr};
    case kAvx2Vnni: return {fp_block_avx2, q_block_avx2_vnni, nullptr};
    case kAvx512: return {fp_block_avx512, q_block_avx2, nullptr};
    case kAvx512Vnni: return {fp_block_avx512, q_block_avx512_vnni, nullptr};
    case kAvx512Bf16: return {fp_block_avx512, q_block_avx512_vnni, bf_block_avx512};
#endif
    default: return {fp_block_portable, q_block_portable, nullptr};
  }
}

// Names of the paths this CPU can run, the best (the default) first.
std::vector<std::string> int8_paths() {
  std::vector<std::string> names;
  for (int64_t p = static_cast<int64_t>(kPathNames.size()) - 1; p >= 0; --p)
    if (path_supported(p)) names.emplace_back(kPathNames[p]);
  return names;
}

// Each row of x (m x k fp32) as int8 with a symmetric per-row scale; xu = xq + 128 as uint8.
void quantize_rows(const float* x, int64_t m, int64_t k, int8_t* xq, uint8_t* xu, float* sx) {
  for (int64_t i = 0; i < m; ++i) {
    const float* xi = x + i * k;
    float amax = 0.0f;
    bool finite = true;
    for (int64_t j = 0; j < k; ++j) {
      amax = std::max(amax, std::fabs(xi[j]));
      finite = finite && std::isfinite(xi[j]);
    }
    if (!finite) {  // a NaN or inf row gives NaN outputs, as the float computation would: never finite garbage
      sx[i] = std::numeric_limits<float>::quiet_NaN();
      std::fill(xq + i * k, xq + (i + 1) * k, int8_t{0});
      std::fill(xu + i * k, xu + (i + 1) * k, uint8_t{128});
      continue;
    }
    sx[i] = amax / 127.0f;
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    for (int64_t j = 0; j < k; ++j) {
      const float q = std::min(127.0f, std::max(-127.0f, std::nearbyint(xi[j] * inv)));
      xq[i * k + j] = static_cast<int8_t>(q);
      xu[i * k + j] = static_cast<uint8_t>(static_cast<int32_t>(q) + 128);
    }
  }
}

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales,
                       const c10::optional<at::Tensor>& bias, bool dynamic_activations, int64_t path) {
  const Kernels kern = kernels_for(path);
  TORCH_CHECK(packed.scalar_type() == at::kChar && packed.dim() == 3 && packed.size(2) == kRows,
              "int8_linear: packed must be an int8 (blocks, K, 16) tensor from pack_weight");
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.dim() == 1, "int8_linear: scales must be fp32 (N,)");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "int8_linear: x must be float32 or bfloat16");
  TORCH_CHECK(x.device().is_cpu() && packed.device().is_cpu() && scales.device().is_cpu(),
              "int8_linear: CPU tensors only");
  const int64_t k = packed.size(1), n = scales.size(0), blocks = packed.size(0);
  TORCH_CHECK(blocks == (n + kRows - 1) / kRows, "int8_linear: ", n, " scales do not fit ", blocks, " blocks");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == k, "int8_linear: x's last dimension must be ", k);
  at::Tensor b;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == n, "int8_linear: bias must be (", n, ",)");
    b = bias->to(at::kFloat).contiguous();
  }
  const at::Tensor w = packed.contiguous();
  const at::Tensor s = scales.contiguous();
  const bool bf16_dot = kern.bf != nullptr && x.scalar_type() == at::kBFloat16 && !dynamic_activations;
  const at::Tensor xf = x.reshape({-1, k}).to(bf16_dot ? at::kBFloat16 : at::kFloat).contiguous();
  const int64_t m = xf.size(0);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = n;
  // The result in x's dtype, written by the epilogue (bf16 rounded there: no fp32 copy to convert afterwards).
  at::Tensor y = at::empty({m, n}, x.options());
  if (m > 0 && n > 0) {
    std::vector<int8_t> xq;
    std::vector<uint8_t> xu;
    std::vector<float> sx;
    if (dynamic_activations) {
      xq.resize(m * k);
      xu.resize(m * k);
      sx.resize(m);
      quantize_rows(xf.data_ptr<float>(), m, k, xq.data(), xu.data(), sx.data());
    }
    const float* xp = bf16_dot ? nullptr : xf.data_ptr<float>();
    const c10::BFloat16* xb = bf16_dot ? xf.data_ptr<c10::BFloat16>() : nullptr;
    const int8_t* wp = w.data_ptr<int8_t>();
    const float* sp = s.data_ptr<float>();
    const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
    float* yf = y.scalar_type() == at::kFloat ? y.data_ptr<float>() : nullptr;
    c10::BFloat16* yb = yf ? nullptr : y.data_ptr<c10::BFloat16>();
    const int64_t groups = k / kGroup, tail = k % kGroup, block_bytes = kRows * k;
    const int64_t chunks = (m + kChunkRows - 1) / kChunkRows, tasks = chunks * blocks;
    const int64_t rows = std::min(m, kChunkRows);
    const bool serial = blocks * block_bytes * std::max<int64_t>(1, rows / kWorkRows) < kSerialBytes;
    const int threads = serial ? 1 : std::max(1, at::get_num_threads());
#pragma omp parallel num_threads(threads)
    {
      std::vector<float> tile(rows > kGemvPassRows && !dynamic_activations && !bf16_dot ? groups * kGroupBytes : 0);
      std::vector<float> acc(kChunkRows * kRows);
      std::vector<int32_t> iacc(dynamic_activations ? kChunkRows * kRows : 0);
#pragma omp for schedule(static)
      for (int64_t t = 0; t < tasks; ++t) {
        const int64_t chunk = t / blocks, blk = t % blocks;
        const int64_t m0 = chunk * kChunkRows, mc = std::min(kChunkRows, m - m0);
        const int8_t* wb = wp + blk * block_bytes;
        if (dynamic_activations) {
          kern.q(xq.data() + m0 * k, xu.data() + m0 * k, k, mc, groups, wb, iacc.data());
          add_tail(xq.data() + m0 * k, k, mc, groups * kGroup, tail, wb + groups * kGroupBytes, iacc.data());
          for (int64_t i = 0; i < mc * kRows; ++i) acc[i] = static_cast<float>(iacc[i]) * sx[m0 + i / kRows];
        } else if (bf16_dot) {
          kern.bf(reinterpret_cast<const uint16_t*>(xb + m0 * k), k, mc, groups, wb, acc.data());
          add_tail(xb + m0 * k, k, mc, groups * kGroup, tail, wb + groups * kGroupBytes, acc.data());
        } else {
          kern.fp(xp + m0 * k, k, mc, groups, wb, tile.data(), acc.data());
          add_tail(xp + m0 * k, k, mc, groups * kGroup, tail, wb + groups * kGroupBytes, acc.data());
        }
        const int64_t n0 = blk * kRows, nr = std::min(kRows, n - n0);
        for (int64_t i = 0; i < mc; ++i) {
          const int64_t first = (m0 + i) * n + n0;  // y's element of this row and the block's first output
          const float* ai = acc.data() + i * kRows;
          for (int64_t r = 0; r < nr; ++r) {
            const float v = ai[r] * sp[n0 + r] + (bp ? bp[n0 + r] : 0.0f);
            if (yf) yf[first + r] = v;
            else yb[first + r] = c10::BFloat16(v);
          }
        }
      }
    }
  }
  return y.view(out_shape);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(llmaas, m) {
  m.def(
      "int8_linear(Tensor x, Tensor packed, Tensor scales, Tensor? bias, bool dynamic_activations, int path) -> "
      "Tensor");
  m.def("int8_paths() -> str[]", &int8_paths);
}

TORCH_LIBRARY_IMPL(llmaas, CPU, m) { m.impl("int8_linear", &int8_linear); }

// The same op as a plain Python function (the eager fast path: no dispatcher, no boxing).
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "LLMaaS weight-only int8 linear kernels for the CPU (see engine/kernels/int8.py)";
  m.def("int8_linear", &int8_linear);
  m.def("int8_paths", &int8_paths);
}
