// LLMaaS multi-LoRA kernels for vLLM's CPU backend (SGMV style).
//
// Owns the arithmetic of the LoRA "shrink" (y = x @ A[slot].T * scale) and "expand"
// (y[:, off:off+n] (+)= x @ B[slot].T) steps, and of both fused for a whole (possibly merged: qkv,
// gate-up) linear layer. Tokens are grouped by adapter slot (a stable counting sort), so each slot's
// weights are read once per call instead of copied once per token; tokens whose slot is -1 (no adapter)
// are skipped and their outputs left untouched (the semantics of vLLM's Triton kernels). Per-slot weight
// preparation (effective rank, packed B) is cached across calls and invalidated by the tensors' version
// counters, so weights must be changed in place only through torch ops (as vLLM's set_lora does).
//
// Numerics follow vLLM's PyTorch fallback ops (vllm/lora/ops/torch_ops/lora_ops.py): inputs and weights
// are converted to the output dtype, products are accumulated in fp32, the GEMM result is rounded to the
// output dtype, and "add_inputs" adds in fp32 and rounds once more (bf16: round-to-nearest-even).
//
// Vectorised for AVX-512 (with AVX512-BF16 dot products where both operands are bf16) and AVX2+FMA,
// scalar elsewhere; the build uses -march=native, so the JIT cache is keyed by the machine. OpenMP (the
// runtime torch already loaded) parallelises only calls large enough to pay for a parallel region.
// Registered as torch.library ops in the "llmaas" namespace (what torch.compile traces), and bound directly as
// functions of the Python module this file builds into (what eager callers use: a call through the dispatcher
// boxes every argument and costs 2-3x the arithmetic of a decode-sized call).

#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <c10/core/StorageImpl.h>
#include <c10/util/Exception.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace {

using bf16_t = uint16_t;

// ---------------------------------------------------------------------------------------------------
// Scalar element conversion.

inline float bf16_to_f32(bf16_t v) {
  uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

inline bf16_t f32_to_bf16(float f) {  // round to nearest even, like c10::BFloat16
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<bf16_t>(u >> 16);
}

inline float load1(const float* p) { return *p; }
inline float load1(const bf16_t* p) { return bf16_to_f32(*p); }
inline void store1(float* p, float v) { *p = v; }
inline void store1(bf16_t* p, float v) { *p = f32_to_bf16(v); }

// The value an fp32 number takes once converted to T (what ``tensor.to(T)`` does).
template <typename T>
inline float round1(float v) {
  if constexpr (std::is_same_v<T, bf16_t>) {
    return bf16_to_f32(f32_to_bf16(v));
  } else {
    return v;
  }
}

// ---------------------------------------------------------------------------------------------------
// A minimal fp32 SIMD layer: W lanes of fp32, loads from fp32 or bf16, stores to either (bf16: RNE).

#if defined(__AVX512F__)
constexpr int W = 16;
constexpr int ROW_BLOCK = 8;  // shrink: rows of A per register block (2 tokens x 8 rows = 16 accumulators)
using vec = __m512;
inline vec vzero() { return _mm512_setzero_ps(); }
inline vec vset1(float v) { return _mm512_set1_ps(v); }
inline vec vload(const float* p) { return _mm512_loadu_ps(p); }
inline vec vload(const bf16_t* p) {
  __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
inline __m512i bf16_bits(vec v) {  // the bf16 (RNE) of each lane, in the low 16 bits of a 32-bit lane
  __m512i u = _mm512_castps_si512(v);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  return _mm512_mask_mov_epi32(r, nan, _mm512_set1_epi32(0x7fc0));
}
#if defined(__AVX512BF16__)
// One instruction (VCVTNEPS2BF16, round to nearest even). It treats denormal inputs as zero, where torch keeps
// them: the results differ only for |v| < 1.2e-38.
inline __m256i bf16_pack(vec v) { return (__m256i)_mm512_cvtneps_pbh(v); }
#else
inline __m256i bf16_pack(vec v) { return _mm512_cvtepi32_epi16(bf16_bits(v)); }
#endif
inline void vstore(float* p, vec v) { _mm512_storeu_ps(p, v); }
inline void vstore(bf16_t* p, vec v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), bf16_pack(v)); }
inline vec vround_bf16(vec v) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bf16_pack(v)), 16));
}
inline vec vfma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
inline vec vadd(vec a, vec b) { return _mm512_add_ps(a, b); }
inline float vsum(vec v) { return _mm512_reduce_add_ps(v); }
#define LLMAAS_ISA "avx512"
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int W = 8;
constexpr int ROW_BLOCK = 4;  // 16 ymm registers: 2 tokens x 4 rows
using vec = __m256;
inline vec vzero() { return _mm256_setzero_ps(); }
inline vec vset1(float v) { return _mm256_set1_ps(v); }
inline vec vload(const float* p) { return _mm256_loadu_ps(p); }
inline vec vload(const bf16_t* p) {
  __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
inline __m256i bf16_bits(vec v) {
  __m256i u = _mm256_castps_si256(v);
  __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
  __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
  return _mm256_castps_si256(
      _mm256_blendv_ps(_mm256_castsi256_ps(r), _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc0)), nan));
}
inline void vstore(float* p, vec v) { _mm256_storeu_ps(p, v); }
inline void vstore(bf16_t* p, vec v) {
  __m256i r = bf16_bits(v);
  __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
}
inline vec vround_bf16(vec v) { return _mm256_castsi256_ps(_mm256_slli_epi32(bf16_bits(v), 16)); }
inline vec vfma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
inline vec vadd(vec a, vec b) { return _mm256_add_ps(a, b); }
inline float vsum(vec v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#define LLMAAS_ISA "avx2"
#else
constexpr int W = 1;
constexpr int ROW_BLOCK = 4;
using vec = float;
inline vec vzero() { return 0.f; }
inline vec vset1(float v) { return v; }
inline vec vload(const float* p) { return *p; }
inline vec vload(const bf16_t* p) { return bf16_to_f32(*p); }
inline void vstore(float* p, vec v) { *p = v; }
inline void vstore(bf16_t* p, vec v) { *p = f32_to_bf16(v); }
inline vec vround_bf16(vec v) { return round1<bf16_t>(v); }
inline vec vfma(vec a, vec b, vec c) { return a * b + c; }
inline vec vadd(vec a, vec b) { return a + b; }
inline float vsum(vec v) { return v; }
#define LLMAAS_ISA "scalar"
#endif

#if defined(__AVX512BF16__) && defined(__AVX512F__)
#define LLMAAS_HAS_DPBF16 1
#endif

// A value loaded from S as the output dtype T sees it (``src.to(T)``): only fp32 -> bf16 changes anything.
template <typename T, typename S>
inline vec vload_as(const S* p) {
  vec v = vload(p);
  if constexpr (std::is_same_v<T, bf16_t> && std::is_same_v<S, float>) v = vround_bf16(v);
  return v;
}
template <typename T, typename S>
inline float load1_as(const S* p) {
  float v = load1(p);
  if constexpr (std::is_same_v<T, bf16_t> && std::is_same_v<S, float>) v = round1<bf16_t>(v);
  return v;
}
template <typename T>
inline vec vround_as(vec v) {
  if constexpr (std::is_same_v<T, bf16_t>) return vround_bf16(v);
  return v;
}

// ---------------------------------------------------------------------------------------------------
// Tensor views the kernels need: a 2-D row-major matrix and a stack of per-slot matrices.

template <typename T>
struct Mat {
  T* data;
  int64_t rows, cols, row_stride;
  T* row(int64_t r) const { return data + r * row_stride; }
};

template <typename T>
struct Stack {  // (slots, [1,] rows, cols) with unit stride along cols
  const at::Tensor* tensor;
  const T* data;
  int64_t slots, rows, cols, slot_stride, row_stride;
  const T* mat(int64_t slot) const { return data + slot * slot_stride; }
};

at::Tensor unit_last_stride(const at::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

template <typename T>
Mat<T> as_mat(const at::Tensor& t) {
  TORCH_CHECK(t.dim() == 2, "llmaas lora: expected a 2-D tensor, got ", t.dim(), "-D");
  TORCH_CHECK(t.stride(1) == 1 || t.size(1) <= 1, "llmaas lora: rows must be contiguous");
  return Mat<T>{static_cast<T*>(t.data_ptr()), t.size(0), t.size(1), t.stride(0)};
}

template <typename T>
Stack<T> as_stack(const at::Tensor& t) {
  TORCH_CHECK(t.dim() == 3 || (t.dim() == 4 && t.size(1) == 1),
              "llmaas lora: weights must be (slots, rows, cols) or (slots, 1, rows, cols)");
  TORCH_CHECK(t.stride(-1) == 1 || t.size(-1) <= 1, "llmaas lora: weight rows must be contiguous");
  return Stack<T>{&t, static_cast<const T*>(t.data_ptr()), t.size(0), t.size(-2), t.size(-1), t.stride(0),
                  t.stride(-2)};
}

// ---------------------------------------------------------------------------------------------------
// Per-slot weight preparation, cached across calls.
//
// vLLM keeps every adapter slot at max_lora_rank, zero-padded (an r=8 adapter in a rank-16 stack), and keeps
// zero slots for modules an adapter does not target (e.g. lm_head). For each slot we record its effective
// rank (A: up to the last non-zero row; B: up to the last non-zero column), so padded ranks and untargeted
// modules cost nothing, and we pack B[slot] (n x R, row-major) into P (rank x n: fp32, or bf16 pairs) so the
// expand loop streams contiguous output columns. Entries are per weight stack, keyed by its address and
// layout and checked against its storage (a weak reference: a freed and reused address is a miss) and its
// version counter, which every in-place write through torch bumps (vLLM's set_lora/reset_lora write through
// views of the stacks). Tensors without a version counter (inference-mode tensors) are prepared per call.

enum class Kind : int { A = 0, B = 1 };

struct Prepared {
  int64_t rank = 0;         // effective rank
  int64_t ld = 0;           // B: rows of B (the stride of P's rows)
  std::vector<float> data;  // B: P[k * ld + j] = B[j, k] for k < rank, as the output dtype sees it
  // B when both B and the output are bf16 (and the CPU has AVX512-BF16): the same values, kept in bf16 and
  // interleaved by pairs of k for dot products: vnni[(m * ld + j) * 2 + h] = B[j, 2m + h] (0 past the rank).
  std::vector<bf16_t> vnni;
};

// Whether the expand of bf16 weights into a bf16 output runs on packed bf16 pairs (half the bytes of fp32).
template <typename Y, typename B>
constexpr bool kVnniExpand =
#if defined(LLMAAS_HAS_DPBF16)
    std::is_same_v<Y, bf16_t> && std::is_same_v<B, bf16_t>;
#else
    false;
#endif

inline bool nonzero(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  return (u & 0x7fffffffu) != 0;
}
inline bool nonzero(bf16_t v) { return (v & 0x7fffu) != 0; }

template <typename T>
Prepared prepare_a(const T* a, int64_t rows, int64_t cols, int64_t stride) {
  Prepared p;
  for (int64_t r = rows - 1; r >= 0 && p.rank == 0; --r)
    for (int64_t k = 0; k < cols; ++k)
      if (nonzero(a[r * stride + k])) {
        p.rank = r + 1;
        break;
      }
  return p;
}

template <typename Y, typename T>
Prepared prepare_b(const T* b, int64_t rows, int64_t cols, int64_t stride) {
  Prepared p;
  for (int64_t j = 0; j < rows; ++j)
    for (int64_t k = cols - 1; k >= p.rank; --k)
      if (nonzero(b[j * stride + k])) {
        p.rank = k + 1;
        break;
      }
  p.ld = rows;
  if constexpr (kVnniExpand<Y, T>) {
    const int64_t pairs = (p.rank + 1) / 2;
    p.vnni.assign(static_cast<size_t>(pairs * rows * 2), 0);
    for (int64_t j = 0; j < rows; ++j)
      for (int64_t k = 0; k < p.rank; ++k) p.vnni[((k / 2) * rows + j) * 2 + (k % 2)] = b[j * stride + k];
  } else {
    p.data.resize(static_cast<size_t>(p.rank * rows));
    for (int64_t j = 0; j < rows; ++j)
      for (int64_t k = 0; k < p.rank; ++k) p.data[k * rows + j] = load1_as<Y>(b + j * stride + k);
  }
  return p;
}

// Every slot of one weight stack, prepared together.
struct PreparedStack {
  std::vector<Prepared> slots;
};

struct CacheKey {
  const void* addr;
  int64_t slots, rows, cols, slot_stride, row_stride;
  int dtype, kind, out_dtype;
  bool operator==(const CacheKey& o) const {
    return addr == o.addr && slots == o.slots && rows == o.rows && cols == o.cols && slot_stride == o.slot_stride &&
           row_stride == o.row_stride && dtype == o.dtype && kind == o.kind && out_dtype == o.out_dtype;
  }
};

struct CacheKeyHash {
  size_t operator()(const CacheKey& k) const {
    size_t h = std::hash<const void*>()(k.addr);
    for (int64_t v : {k.slots, k.rows, k.cols, k.slot_stride, k.row_stride, int64_t(k.dtype), int64_t(k.kind),
                      int64_t(k.out_dtype)})
      h = h * 1000003u ^ std::hash<int64_t>()(v);
    return h;
  }
};

struct CacheEntry {
  c10::weak_intrusive_ptr<c10::StorageImpl> storage;
  int64_t version;
  std::shared_ptr<const PreparedStack> prepared;
};

class WeightCache {
 public:
  // The prepared slots of ``stack`` (A: effective ranks; B: effective ranks and packed weights for output Y).
  template <typename Y, typename T>
  std::shared_ptr<const PreparedStack> get(const Stack<T>& stack, Kind kind) {
    auto build = [&] {
      auto prepared = std::make_shared<PreparedStack>();
      prepared->slots.reserve(static_cast<size_t>(stack.slots));
      for (int64_t s = 0; s < stack.slots; ++s)
        prepared->slots.push_back(kind == Kind::A
                                      ? prepare_a(stack.mat(s), stack.rows, stack.cols, stack.row_stride)
                                      : prepare_b<Y>(stack.mat(s), stack.rows, stack.cols, stack.row_stride));
      return std::shared_ptr<const PreparedStack>(std::move(prepared));
    };
    const at::Tensor& t = *stack.tensor;
    if (t.is_inference()) {  // no version counter to trust
      ++uncached_;
      return build();
    }
    const CacheKey key{stack.data,
                       stack.slots,
                       stack.rows,
                       stack.cols,
                       stack.slot_stride,
                       stack.row_stride,
                       static_cast<int>(t.scalar_type()),
                       static_cast<int>(kind),
                       std::is_same_v<Y, float> ? 0 : 1};
    const int64_t version = t._version();
    c10::StorageImpl* storage = t.storage().unsafeGetStorageImpl();
    std::lock_guard<std::mutex> lock(mu_);
    auto it = map_.find(key);
    if (it != map_.end() && it->second.version == version && !it->second.storage.expired() &&
        it->second.storage._unsafe_get_target() == storage) {
      ++hits_;
      return it->second.prepared;
    }
    ++misses_;
    if (map_.size() >= sweep_at_) sweep();
    auto prepared = build();
    map_.insert_or_assign(key, CacheEntry{t.storage().getWeakStorageImpl(), version, prepared});
    return prepared;
  }

  std::vector<int64_t> stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {hits_, misses_, uncached_, static_cast<int64_t>(map_.size())};
  }

  void clear() {
    std::lock_guard<std::mutex> lock(mu_);
    map_.clear();
  }

 private:
  void sweep() {  // drop the entries of tensors that are gone; sweep again once the live entries doubled
    for (auto it = map_.begin(); it != map_.end();) it = it->second.storage.expired() ? map_.erase(it) : std::next(it);
    sweep_at_ = std::max<size_t>(1024, 2 * map_.size());
  }
  size_t sweep_at_ = 1024;
  std::mutex mu_;
  std::unordered_map<CacheKey, CacheEntry, CacheKeyHash> map_;
  int64_t hits_ = 0, misses_ = 0, uncached_ = 0;
};

WeightCache& cache() {
  static WeightCache* instance = new WeightCache();  // never destroyed: no teardown-order surprises at exit
  return *instance;
}

// ---------------------------------------------------------------------------------------------------
// Tokens grouped by slot: positions 0..n-1 list the active tokens ordered by slot (stable), groups are
// runs of positions sharing a slot.

struct Plan {
  std::vector<int32_t> token;  // per position
  std::vector<int32_t> group;  // per position
  std::vector<int32_t> group_begin, group_end, group_slot;
  int64_t active() const { return static_cast<int64_t>(token.size()); }
  int64_t groups() const { return static_cast<int64_t>(group_slot.size()); }
};

void make_plan(const at::Tensor& indices, int64_t num_tokens, int64_t num_slots, Plan& plan) {
  TORCH_CHECK(indices.dim() == 1 && indices.size(0) == num_tokens, "llmaas lora: expected ", num_tokens,
              " token indices, got shape ", indices.sizes());
  TORCH_CHECK(indices.scalar_type() == at::kLong || indices.scalar_type() == at::kInt,
              "llmaas lora: indices must be int64 or int32");
  TORCH_CHECK(indices.device().is_cpu(), "llmaas lora: indices must be on the CPU");
  at::Tensor idx = indices.scalar_type() == at::kLong ? indices.contiguous() : indices.to(at::kLong).contiguous();
  const int64_t* ids = idx.data_ptr<int64_t>();
  std::vector<int32_t> counts(static_cast<size_t>(num_slots) + 1, 0);
  int64_t active = 0;
  for (int64_t t = 0; t < num_tokens; ++t) {
    const int64_t s = ids[t];
    if (s < 0) continue;
    TORCH_CHECK(s < num_slots, "llmaas lora: adapter slot ", s, " out of range (", num_slots, " slots)");
    ++counts[s + 1];
    ++active;
  }
  plan.token.assign(active, 0);
  plan.group.assign(active, 0);
  plan.group_begin.clear();
  plan.group_end.clear();
  plan.group_slot.clear();
  if (active == 0) return;
  std::vector<int32_t> group_of_slot(static_cast<size_t>(num_slots), -1);
  for (int64_t s = 0; s < num_slots; ++s) {
    if (counts[s + 1] > 0) {
      group_of_slot[s] = static_cast<int32_t>(plan.group_slot.size());
      plan.group_begin.push_back(counts[s]);
      plan.group_end.push_back(counts[s] + counts[s + 1]);
      plan.group_slot.push_back(static_cast<int32_t>(s));
    }
    counts[s + 1] += counts[s];
  }
  for (int64_t t = 0; t < num_tokens; ++t) {
    const int64_t s = ids[t];
    if (s < 0) continue;
    const int32_t p = counts[s]++;
    plan.token[p] = static_cast<int32_t>(t);
    plan.group[p] = group_of_slot[s];
  }
}

// Below this many multiply-adds a call runs on the calling thread: a parallel region costs more. Inside the
// engine the other threads are still spinning from the base layer's GEMM, so a region starts in ~1 us, and the
// adapter weights each call reads come from DRAM (the base model streamed ~10 MB since the previous step's call):
// two threads fetch them faster than one. Measured in a simulated decode step (30 layers, 4 adapters, 32 tokens,
// paired within one process): 1 << 16 cut the LoRA time by 17 % against 1 << 19; 1 << 12 and 1 << 14 no better.
// In the real engine the difference in tok/s was within noise (paired runs, 1 << 16 / 1 << 19 / never).
constexpr int64_t PARALLEL_MIN_MACS = 1 << 16;

template <typename F>
inline void run_items(int64_t n, bool parallel, const F& f) {
  if (parallel && n > 1 && at::get_num_threads() > 1) {
#pragma omp parallel for schedule(static) num_threads(at::get_num_threads())
    for (int64_t i = 0; i < n; ++i) f(i);
  } else {
    for (int64_t i = 0; i < n; ++i) f(i);
  }
}

// Work items: pairs of positions within one group (two tokens share every weight load), per slice (and, for
// the expand, per chunk of output columns).
struct PairItem {
  int32_t slice, group, p0, p1;
  int64_t j0, j1;
};

constexpr int64_t EXPAND_COLS = 512;  // output columns per expand work item
constexpr int64_t MAX_RANK = 1024;    // vLLM's largest max_lora_rank is 512

std::vector<PairItem> pair_items(const Plan& plan, const std::vector<int64_t>& columns, int64_t chunk) {
  std::vector<PairItem> items;
  for (size_t i = 0; i < columns.size(); ++i)
    for (int64_t j0 = 0; j0 < std::max<int64_t>(columns[i], 1); j0 += chunk)
      for (int64_t g = 0; g < plan.groups(); ++g)
        for (int32_t p = plan.group_begin[g]; p < plan.group_end[g]; p += 2)
          items.push_back({static_cast<int32_t>(i), static_cast<int32_t>(g), p, std::min(p + 2, plan.group_end[g]), j0,
                           std::min(columns[i], j0 + chunk)});
  return items;
}

// ---------------------------------------------------------------------------------------------------
// Shrink: out[t, r] = scale * sum_k x[t, k] * A[slot, r, k]   (NT tokens x NR rows per register block)

#if defined(__AVX512F__)
// The 8 horizontal sums of 8 accumulators, as one transposing reduction instead of 8 separate ones.
inline void reduce8(const __m512* a, float* out) {
  __m256 b[8];
  for (int i = 0; i < 8; ++i)
    b[i] = _mm256_add_ps(_mm512_castps512_ps256(a[i]),
                         _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a[i]), 1)));
  const __m256 h0123 = _mm256_hadd_ps(_mm256_hadd_ps(b[0], b[1]), _mm256_hadd_ps(b[2], b[3]));
  const __m256 h4567 = _mm256_hadd_ps(_mm256_hadd_ps(b[4], b[5]), _mm256_hadd_ps(b[6], b[7]));
  const __m256 lo = _mm256_permute2f128_ps(h0123, h4567, 0x20);
  const __m256 hi = _mm256_permute2f128_ps(h0123, h4567, 0x31);
  _mm256_storeu_ps(out, _mm256_add_ps(lo, hi));
}

template <int NT, int NR>
inline void reduce_acc(const __m512 (&acc)[NT][NR], float (&out)[NT][NR]) {
  for (int t = 0; t < NT; ++t) {
    if constexpr (NR == 8) {
      reduce8(acc[t], out[t]);
    } else {
      for (int r = 0; r < NR; ++r) out[t][r] = _mm512_reduce_add_ps(acc[t][r]);
    }
  }
}
#endif

template <typename Y, typename X, typename A, int NT, int NR>
inline void shrink_block(const X* const* xs, const A* a, int64_t a_stride, int64_t K, float (&acc_out)[NT][NR]) {
  int64_t k = 0;
#if defined(LLMAAS_HAS_DPBF16)
  if constexpr (std::is_same_v<X, bf16_t> && std::is_same_v<A, bf16_t>) {
    __m512 acc[NT][NR];
    for (int t = 0; t < NT; ++t)
      for (int r = 0; r < NR; ++r) acc[t][r] = _mm512_setzero_ps();
    for (; k + 32 <= K; k += 32) {
      __m512i xv[NT];
      for (int t = 0; t < NT; ++t) xv[t] = _mm512_loadu_si512(xs[t] + k);
      for (int r = 0; r < NR; ++r) {
        const __m512i av = _mm512_loadu_si512(a + r * a_stride + k);
        for (int t = 0; t < NT; ++t) acc[t][r] = _mm512_dpbf16_ps(acc[t][r], (__m512bh)xv[t], (__m512bh)av);
      }
    }
    reduce_acc<NT, NR>(acc, acc_out);
  } else
#endif
  {
    vec acc[NT][NR];
    for (int t = 0; t < NT; ++t)
      for (int r = 0; r < NR; ++r) acc[t][r] = vzero();
    for (; k + W <= K; k += W) {
      vec xv[NT];
      for (int t = 0; t < NT; ++t) xv[t] = vload_as<Y>(xs[t] + k);
      for (int r = 0; r < NR; ++r) {
        const vec av = vload_as<Y>(a + r * a_stride + k);
        for (int t = 0; t < NT; ++t) acc[t][r] = vfma(xv[t], av, acc[t][r]);
      }
    }
#if defined(__AVX512F__)
    reduce_acc<NT, NR>(acc, acc_out);
#else
    for (int t = 0; t < NT; ++t)
      for (int r = 0; r < NR; ++r) acc_out[t][r] = vsum(acc[t][r]);
#endif
  }
  for (; k < K; ++k) {
    for (int r = 0; r < NR; ++r) {
      const float av = load1_as<Y>(a + r * a_stride + k);
      for (int t = 0; t < NT; ++t) acc_out[t][r] += load1_as<Y>(xs[t] + k) * av;
    }
  }
}

// NT tokens (same slot) against rows [0, rank) of A[slot]; rows [rank, rows_out) of the outputs get zeros.
template <typename Y, typename X, typename A, int NT>
inline void shrink_tokens(const X* const* xs, const A* a, int64_t a_stride, int64_t rank, int64_t rows_out,
                          int64_t K, Y* const* outs, float scale) {
  int64_t r0 = 0;
  for (; r0 + ROW_BLOCK <= rank; r0 += ROW_BLOCK) {
    float acc[NT][ROW_BLOCK];
    shrink_block<Y, X, A, NT, ROW_BLOCK>(xs, a + r0 * a_stride, a_stride, K, acc);
    for (int t = 0; t < NT; ++t)
      for (int r = 0; r < ROW_BLOCK; ++r) store1(outs[t] + r0 + r, scale * round1<Y>(acc[t][r]));
  }
  for (; r0 < rank; ++r0) {
    float acc[NT][1];
    shrink_block<Y, X, A, NT, 1>(xs, a + r0 * a_stride, a_stride, K, acc);
    for (int t = 0; t < NT; ++t) store1(outs[t] + r0, scale * round1<Y>(acc[t][0]));
  }
  for (int t = 0; t < NT; ++t)
    for (int64_t r = rank; r < rows_out; ++r) store1(outs[t] + r, 0.f);
}

template <typename Y, typename X, typename A, typename OutRow>
inline void shrink_item(const Plan& plan, const PairItem& item, const Mat<X>& x, const Stack<A>& a, int64_t rank,
                        int64_t rows_out, float scale, const OutRow& out_row) {
  const A* w = a.mat(plan.group_slot[item.group]);
  if (item.p1 - item.p0 == 2) {
    const X* xs[2] = {x.row(plan.token[item.p0]), x.row(plan.token[item.p0 + 1])};
    Y* outs[2] = {out_row(item.p0), out_row(item.p0 + 1)};
    shrink_tokens<Y, X, A, 2>(xs, w, a.row_stride, rank, rows_out, a.cols, outs, scale);
  } else {
    const X* xs[1] = {x.row(plan.token[item.p0])};
    Y* outs[1] = {out_row(item.p0)};
    shrink_tokens<Y, X, A, 1>(xs, w, a.row_stride, rank, rows_out, a.cols, outs, scale);
  }
}

// ---------------------------------------------------------------------------------------------------
// Expand: y[t, j] (+)= sum_{k < rank} x[t, k] * P[k, j]  for j in [j0, j1), NT tokens sharing each load of P.

template <typename Y>
inline void expand_epilogue(vec acc, Y* y, bool add_inputs) {
  vec out = vround_as<Y>(acc);  // the GEMM result in the output dtype, as vLLM's einsum returns it
  if (add_inputs) out = vadd(vload(y), out);
  vstore(y, out);
}

template <typename Y, int NT>
inline void expand_rows(const float (*xb)[MAX_RANK], int64_t rank, const float* P, int64_t ld, int64_t j0, int64_t j1,
                        Y* const* ys, bool add_inputs) {
  int64_t j = j0;
  for (; j + 4 * W <= j1; j += 4 * W) {
    vec acc[NT][4];
    for (int t = 0; t < NT; ++t)
      for (int v = 0; v < 4; ++v) acc[t][v] = vzero();
    for (int64_t k = 0; k < rank; ++k) {
      const float* pk = P + k * ld + j;
      const vec p[4] = {vload(pk), vload(pk + W), vload(pk + 2 * W), vload(pk + 3 * W)};
      for (int t = 0; t < NT; ++t) {
        const vec xk = vset1(xb[t][k]);
        for (int v = 0; v < 4; ++v) acc[t][v] = vfma(xk, p[v], acc[t][v]);
      }
    }
    for (int t = 0; t < NT; ++t)
      for (int v = 0; v < 4; ++v) expand_epilogue(acc[t][v], ys[t] + j + v * W, add_inputs);
  }
  for (; j + W <= j1; j += W) {
    vec acc[NT];
    for (int t = 0; t < NT; ++t) acc[t] = vzero();
    for (int64_t k = 0; k < rank; ++k) {
      const vec p = vload(P + k * ld + j);
      for (int t = 0; t < NT; ++t) acc[t] = vfma(vset1(xb[t][k]), p, acc[t]);
    }
    for (int t = 0; t < NT; ++t) expand_epilogue(acc[t], ys[t] + j, add_inputs);
  }
  for (; j < j1; ++j) {
    for (int t = 0; t < NT; ++t) {
      float acc = 0.f;
      for (int64_t k = 0; k < rank; ++k) acc += xb[t][k] * P[k * ld + j];
      acc = round1<Y>(acc);
      if (add_inputs) acc += load1(ys[t] + j);
      store1(ys[t] + j, acc);
    }
  }
}

#if defined(LLMAAS_HAS_DPBF16)
// The same for bf16 weights and output: xp[t][m] holds x[t, 2m] and x[t, 2m + 1] (bf16) in one 32-bit word, and
// each dot-product instruction takes two k at once from the packed pairs.
template <int NT>
inline void expand_rows_vnni(const uint32_t (*xp)[MAX_RANK / 2], int64_t pairs, const bf16_t* P, int64_t ld,
                             int64_t j0, int64_t j1, bf16_t* const* ys, bool add_inputs) {
  int64_t j = j0;
  for (; j + 64 <= j1; j += 64) {
    __m512 acc[NT][4];
    for (int t = 0; t < NT; ++t)
      for (int v = 0; v < 4; ++v) acc[t][v] = _mm512_setzero_ps();
    for (int64_t m = 0; m < pairs; ++m) {
      const bf16_t* pm = P + (m * ld + j) * 2;
      const __m512i p[4] = {_mm512_loadu_si512(pm), _mm512_loadu_si512(pm + 32), _mm512_loadu_si512(pm + 64),
                            _mm512_loadu_si512(pm + 96)};
      for (int t = 0; t < NT; ++t) {
        const __m512i xm = _mm512_set1_epi32(static_cast<int>(xp[t][m]));
        for (int v = 0; v < 4; ++v) acc[t][v] = _mm512_dpbf16_ps(acc[t][v], (__m512bh)p[v], (__m512bh)xm);
      }
    }
    for (int t = 0; t < NT; ++t)
      for (int v = 0; v < 4; ++v) expand_epilogue(acc[t][v], ys[t] + j + v * 16, add_inputs);
  }
  for (; j + 16 <= j1; j += 16) {
    __m512 acc[NT];
    for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t m = 0; m < pairs; ++m) {
      const __m512i p = _mm512_loadu_si512(P + (m * ld + j) * 2);
      for (int t = 0; t < NT; ++t)
        acc[t] = _mm512_dpbf16_ps(acc[t], (__m512bh)p, (__m512bh)_mm512_set1_epi32(static_cast<int>(xp[t][m])));
    }
    for (int t = 0; t < NT; ++t) expand_epilogue(acc[t], ys[t] + j, add_inputs);
  }
  for (; j < j1; ++j) {
    for (int t = 0; t < NT; ++t) {
      float acc = 0.f;
      for (int64_t m = 0; m < pairs; ++m) {
        const bf16_t* pj = P + (m * ld + j) * 2;
        acc += bf16_to_f32(static_cast<bf16_t>(xp[t][m] & 0xffffu)) * bf16_to_f32(pj[0]);
        acc += bf16_to_f32(static_cast<bf16_t>(xp[t][m] >> 16)) * bf16_to_f32(pj[1]);
      }
      acc = round1<bf16_t>(acc);
      if (add_inputs) acc += load1(ys[t] + j);
      store1(ys[t] + j, acc);
    }
  }
}
#endif

// Expand of every slice. rank(i, g): the rank slice i uses for group g; packed(i, g): its P; x_row(i, p): slice
// i's input row for position p. With add_inputs, rank-0 (all-zero) slot weights are skipped outright.
template <typename Y, typename XR, typename B, typename RankF, typename PackedF, typename XRow>
void expand_slices(const Plan& plan, const std::vector<int64_t>& offsets, const std::vector<int64_t>& sizes,
                   const Mat<Y>& y, bool add_inputs, const RankF& rank, const PackedF& packed, const XRow& x_row) {
  const int64_t S = static_cast<int64_t>(sizes.size());
  int64_t macs = 0;
  for (int64_t i = 0; i < S; ++i)
    for (int64_t g = 0; g < plan.groups(); ++g)
      macs += (plan.group_end[g] - plan.group_begin[g]) * sizes[i] * rank(i, g);
  if (macs == 0 && add_inputs) return;
  const std::vector<PairItem> items = pair_items(plan, sizes, EXPAND_COLS);
  run_items(static_cast<int64_t>(items.size()), macs >= PARALLEL_MIN_MACS, [&](int64_t n) {
    const PairItem& it = items[n];
    const int64_t r = rank(it.slice, it.group);
    if (r == 0 && add_inputs) return;
    const Prepared& P = packed(it.slice, it.group);
    Y* ys[2];
    const int nt = it.p1 - it.p0;
#if defined(LLMAAS_HAS_DPBF16)
    if constexpr (kVnniExpand<Y, B>) {
      uint32_t xp[2][MAX_RANK / 2];
      const int64_t pairs = (r + 1) / 2;
      for (int t = 0; t < nt; ++t) {
        const XR* xr = x_row(it.slice, it.p0 + t);
        for (int64_t m = 0; m < pairs; ++m) {
          const uint32_t lo = f32_to_bf16(load1(xr + 2 * m));
          const uint32_t hi = 2 * m + 1 < r ? f32_to_bf16(load1(xr + 2 * m + 1)) : 0u;
          xp[t][m] = lo | (hi << 16);
        }
        ys[t] = y.row(plan.token[it.p0 + t]) + offsets[it.slice];
      }
      if (nt == 2) {
        expand_rows_vnni<2>(xp, pairs, P.vnni.data(), P.ld, it.j0, it.j1, ys, add_inputs);
      } else {
        expand_rows_vnni<1>(xp, pairs, P.vnni.data(), P.ld, it.j0, it.j1, ys, add_inputs);
      }
      return;
    }
#endif
    float xb[2][MAX_RANK];
    for (int t = 0; t < nt; ++t) {
      const XR* xr = x_row(it.slice, it.p0 + t);
      for (int64_t k = 0; k < r; ++k) xb[t][k] = load1_as<Y>(xr + k);
      ys[t] = y.row(plan.token[it.p0 + t]) + offsets[it.slice];
    }
    if (nt == 2) {
      expand_rows<Y, 2>(xb, r, P.data.data(), P.ld, it.j0, it.j1, ys, add_inputs);
    } else {
      expand_rows<Y, 1>(xb, r, P.data.data(), P.ld, it.j0, it.j1, ys, add_inputs);
    }
  });
}

void check_slices(const std::vector<int64_t>& sizes, int64_t offset_start, at::TensorList weights, int64_t width,
                  std::vector<int64_t>& offsets) {
  TORCH_CHECK(sizes.size() == weights.size(), "llmaas lora: ", weights.size(), " weight slices but ", sizes.size(),
              " slice sizes");
  int64_t off = offset_start;
  offsets.clear();
  for (size_t i = 0; i < sizes.size(); ++i) {
    TORCH_CHECK(sizes[i] >= 0 && sizes[i] <= weights[i].size(-2), "llmaas lora: slice ", i, " size ", sizes[i],
                " exceeds its weight's ", weights[i].size(-2), " rows");
    TORCH_CHECK(weights[i].size(-1) <= MAX_RANK, "llmaas lora: ranks above ", MAX_RANK, " are not supported");
    offsets.push_back(off);
    off += sizes[i];
  }
  TORCH_CHECK(offset_start >= 0 && off <= width, "llmaas lora: slices end at column ", off, " of ", width);
}

// ---------------------------------------------------------------------------------------------------
// The three ops.

template <typename Y, typename X, typename A>
void shrink_typed(const at::Tensor& x_t, const std::vector<at::Tensor>& weights, at::TensorList outputs,
                  const at::Tensor& indices, double scale) {
  const Mat<X> x = as_mat<X>(x_t);
  const int64_t S = static_cast<int64_t>(weights.size());
  std::vector<Stack<A>> a(S);
  std::vector<Mat<Y>> y(S);
  for (int64_t i = 0; i < S; ++i) {
    a[i] = as_stack<A>(weights[i]);
    y[i] = as_mat<Y>(outputs[i]);
    TORCH_CHECK(a[i].cols == x.cols, "llmaas lora_shrink: weight width ", a[i].cols, " != input width ", x.cols);
    TORCH_CHECK(a[i].slots == a[0].slots, "llmaas lora_shrink: slices disagree on the number of slots");
    TORCH_CHECK(y[i].rows == x.rows && y[i].cols >= a[i].rows, "llmaas lora_shrink: output is ", y[i].rows, "x",
                y[i].cols, " for ", x.rows, " tokens of rank ", a[i].rows);
  }
  Plan plan;
  make_plan(indices, x.rows, a[0].slots, plan);
  if (plan.active() == 0) return;
  const int64_t G = plan.groups();
  std::vector<int64_t> rank(S * G);
  int64_t macs = 0;
  for (int64_t i = 0; i < S; ++i) {
    const auto prepared = cache().get<float>(a[i], Kind::A);
    for (int64_t g = 0; g < G; ++g) {
      rank[i * G + g] = prepared->slots[plan.group_slot[g]].rank;
      macs += (plan.group_end[g] - plan.group_begin[g]) * rank[i * G + g] * x.cols;
    }
  }
  const std::vector<PairItem> items = pair_items(plan, std::vector<int64_t>(S, 1), 1);
  run_items(static_cast<int64_t>(items.size()), macs >= PARALLEL_MIN_MACS, [&](int64_t n) {
    const PairItem& it = items[n];
    shrink_item<Y>(plan, it, x, a[it.slice], rank[it.slice * G + it.group], a[it.slice].rows,
                   static_cast<float>(scale), [&](int64_t p) { return y[it.slice].row(plan.token[p]); });
  });
}

template <typename Y, typename X, typename B>
void expand_typed(const std::vector<at::Tensor>& inputs, const std::vector<at::Tensor>& weights, const at::Tensor& out,
                  const at::Tensor& indices, int64_t offset_start, c10::IntArrayRef slice_sizes, bool add_inputs) {
  const Mat<Y> y = as_mat<Y>(out);
  const int64_t S = static_cast<int64_t>(weights.size());
  TORCH_CHECK(static_cast<int64_t>(inputs.size()) == S, "llmaas lora_expand: one input per weight slice");
  std::vector<Mat<X>> x(S);
  std::vector<Stack<B>> b(S);
  for (int64_t i = 0; i < S; ++i) {
    x[i] = as_mat<X>(inputs[i]);
    b[i] = as_stack<B>(weights[i]);
    TORCH_CHECK(x[i].cols == b[i].cols, "llmaas lora_expand: input width ", x[i].cols, " != rank ", b[i].cols);
    TORCH_CHECK(x[i].rows == y.rows, "llmaas lora_expand: ", x[i].rows, " input rows for ", y.rows, " output rows");
    TORCH_CHECK(b[i].slots == b[0].slots, "llmaas lora_expand: slices disagree on the number of slots");
  }
  std::vector<int64_t> sizes(slice_sizes.begin(), slice_sizes.end()), offsets;
  check_slices(sizes, offset_start, weights, y.cols, offsets);
  Plan plan;
  make_plan(indices, y.rows, b[0].slots, plan);
  if (plan.active() == 0) return;
  std::vector<std::shared_ptr<const PreparedStack>> packed(S);
  for (int64_t i = 0; i < S; ++i) packed[i] = cache().get<Y>(b[i], Kind::B);
  auto slot_of = [&](int64_t i, int64_t g) -> const Prepared& { return packed[i]->slots[plan.group_slot[g]]; };
  expand_slices<Y, X, B>(
      plan, offsets, sizes, y, add_inputs, [&](int64_t i, int64_t g) { return slot_of(i, g).rank; }, slot_of,
      [&](int64_t i, int64_t p) { return x[i].row(plan.token[p]); });
}

// y[:, off_i : off_i + n_i] += (x @ A_i[slot].T * scale) @ B_i[slot].T for every slice i, with the
// intermediate in fp32 (vLLM's buffer dtype).
template <typename Y, typename X, typename A>
void linear_typed(const at::Tensor& out, const at::Tensor& x_t, const std::vector<at::Tensor>& lora_a,
                  const std::vector<at::Tensor>& lora_b, const at::Tensor& indices, double scale, int64_t offset_start,
                  c10::IntArrayRef slice_sizes) {
  const Mat<Y> y = as_mat<Y>(out);
  const Mat<X> x = as_mat<X>(x_t);
  TORCH_CHECK(x.rows == y.rows, "llmaas lora_linear: ", x.rows, " input rows for ", y.rows, " output rows");
  const int64_t S = static_cast<int64_t>(lora_a.size());
  TORCH_CHECK(static_cast<int64_t>(lora_b.size()) == S, "llmaas lora_linear: as many A as B slices");
  std::vector<Stack<A>> a(S), b(S);
  const int64_t R = lora_a[0].size(-2);
  for (int64_t i = 0; i < S; ++i) {
    a[i] = as_stack<A>(lora_a[i]);
    b[i] = as_stack<A>(lora_b[i]);
    TORCH_CHECK(a[i].cols == x.cols, "llmaas lora_linear: A width ", a[i].cols, " != input width ", x.cols);
    TORCH_CHECK(a[i].rows == R && b[i].cols == R, "llmaas lora_linear: rank mismatch between A and B");
    TORCH_CHECK(a[i].slots == a[0].slots && b[i].slots == a[0].slots, "llmaas lora_linear: slot count mismatch");
  }
  std::vector<int64_t> sizes(slice_sizes.begin(), slice_sizes.end()), offsets;
  check_slices(sizes, offset_start, lora_b, y.cols, offsets);
  Plan plan;
  make_plan(indices, x.rows, a[0].slots, plan);
  if (plan.active() == 0) return;
  const int64_t G = plan.groups(), n_pos = plan.active();
  std::vector<std::shared_ptr<const PreparedStack>> packed(S);
  std::vector<int64_t> rank(S * G);
  int64_t macs = 0;
  for (int64_t i = 0; i < S; ++i) {
    packed[i] = cache().get<Y>(b[i], Kind::B);
    std::shared_ptr<const PreparedStack> prepared_a;
    for (int64_t g = 0; g < G; ++g) {
      const int64_t slot = plan.group_slot[g], rank_b = packed[i]->slots[slot].rank;
      if (rank_b > 0 && !prepared_a) prepared_a = cache().get<float>(a[i], Kind::A);
      rank[i * G + g] = rank_b == 0 ? 0 : std::min(rank_b, prepared_a->slots[slot].rank);
      macs += (plan.group_end[g] - plan.group_begin[g]) * rank[i * G + g] * x.cols;
    }
  }
  if (macs == 0) return;  // every slot in use has all-zero weights for this layer
  thread_local std::vector<float> buffer;
  if (static_cast<int64_t>(buffer.size()) < S * n_pos * R) buffer.resize(S * n_pos * R);
  float* buf = buffer.data();  // slice i, position p: buf + (i * n_pos + p) * R
  const std::vector<PairItem> items = pair_items(plan, std::vector<int64_t>(S, 1), 1);
  run_items(static_cast<int64_t>(items.size()), macs >= PARALLEL_MIN_MACS, [&](int64_t n) {
    const PairItem& it = items[n];
    const int64_t r = rank[it.slice * G + it.group];
    if (r == 0) return;
    shrink_item<float>(plan, it, x, a[it.slice], r, r, static_cast<float>(scale),
                       [&](int64_t p) { return buf + (it.slice * n_pos + p) * R; });
  });
  expand_slices<Y, float, A>(
      plan, offsets, sizes, y, /*add_inputs=*/true, [&](int64_t i, int64_t g) { return rank[i * G + g]; },
      [&](int64_t i, int64_t g) -> const Prepared& { return packed[i]->slots[plan.group_slot[g]]; },
      [&](int64_t i, int64_t p) { return buf + (i * n_pos + p) * R; });
}

// ---------------------------------------------------------------------------------------------------
// dtype dispatch (fp32 and bf16) and registration.

bool is_fp(const at::Tensor& t) { return t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16; }

#define LLMAAS_DISPATCH_ONE(TENSOR, NAME, ...)           \
  [&] {                                                  \
    if ((TENSOR).scalar_type() == at::kFloat) {          \
      using NAME = float;                                \
      return __VA_ARGS__();                              \
    } else {                                             \
      using NAME = bf16_t;                               \
      return __VA_ARGS__();                              \
    }                                                    \
  }()

#define LLMAAS_DISPATCH3(T1, N1, T2, N2, T3, N3, ...) \
  LLMAAS_DISPATCH_ONE(T1, N1, [&] { return LLMAAS_DISPATCH_ONE(T2, N2, [&] { return LLMAAS_DISPATCH_ONE(T3, N3, __VA_ARGS__); }); })

void check_dtypes(const char* op, std::initializer_list<const at::Tensor*> tensors) {
  for (const at::Tensor* t : tensors)
    TORCH_CHECK(is_fp(*t), "llmaas ", op, ": only float32 and bfloat16 are supported, got ", t->scalar_type());
}

void check_same_dtype(const char* op, at::TensorList ts) {
  for (const at::Tensor& t : ts) {
    TORCH_CHECK(t.scalar_type() == ts[0].scalar_type(), "llmaas ", op, ": all slices must share one dtype");
    TORCH_CHECK(t.device().is_cpu(), "llmaas ", op, ": CPU tensors only");
  }
}

void lora_shrink(const at::Tensor& x, at::TensorList weights, at::TensorList outputs, const at::Tensor& indices,
                 double scale) {
  TORCH_CHECK(!weights.empty() && weights.size() == outputs.size(), "llmaas lora_shrink: one output per weight");
  check_same_dtype("lora_shrink", weights);
  check_same_dtype("lora_shrink", outputs);
  check_dtypes("lora_shrink", {&x, &weights[0], &outputs[0]});
  std::vector<at::Tensor> w;
  for (const at::Tensor& t : weights) w.push_back(unit_last_stride(t));
  const at::Tensor xc = unit_last_stride(x);
  LLMAAS_DISPATCH3(outputs[0], Y, xc, X, w[0], A, [&] { shrink_typed<Y, X, A>(xc, w, outputs, indices, scale); });
}

void lora_expand(at::TensorList inputs, at::TensorList weights, const at::Tensor& output, const at::Tensor& indices,
                 int64_t offset_start, c10::IntArrayRef slice_sizes, bool add_inputs) {
  TORCH_CHECK(!weights.empty(), "llmaas lora_expand: no weight slices");
  check_same_dtype("lora_expand", weights);
  check_same_dtype("lora_expand", inputs);
  check_dtypes("lora_expand", {&inputs[0], &weights[0], &output});
  std::vector<at::Tensor> w, x;
  for (const at::Tensor& t : weights) w.push_back(unit_last_stride(t));
  for (const at::Tensor& t : inputs) x.push_back(unit_last_stride(t));
  LLMAAS_DISPATCH3(output, Y, x[0], X, w[0], B, [&] {
    expand_typed<Y, X, B>(x, w, output, indices, offset_start, slice_sizes, add_inputs);
  });
}

void lora_linear(const at::Tensor& output, const at::Tensor& x, at::TensorList lora_a, at::TensorList lora_b,
                 const at::Tensor& indices, double scale, int64_t offset_start, c10::IntArrayRef slice_sizes) {
  TORCH_CHECK(!lora_a.empty(), "llmaas lora_linear: no weight slices");
  check_same_dtype("lora_linear", lora_a);
  check_same_dtype("lora_linear", lora_b);
  TORCH_CHECK(lora_a[0].scalar_type() == lora_b[0].scalar_type(), "llmaas lora_linear: A and B dtypes differ");
  check_dtypes("lora_linear", {&x, &lora_a[0], &output});
  std::vector<at::Tensor> a, b;
  for (const at::Tensor& t : lora_a) a.push_back(unit_last_stride(t));
  for (const at::Tensor& t : lora_b) b.push_back(unit_last_stride(t));
  const at::Tensor xc = unit_last_stride(x);
  LLMAAS_DISPATCH3(output, Y, xc, X, a[0], A, [&] {
    linear_typed<Y, X, A>(output, xc, a, b, indices, scale, offset_start, slice_sizes);
  });
}

std::vector<int64_t> cache_stats() { return cache().stats(); }

void cache_clear() { cache().clear(); }

std::string isa() {
  std::string s = LLMAAS_ISA;
#if defined(LLMAAS_HAS_DPBF16)
  s += "+bf16";
#endif
  return s;
}

}  // namespace

TORCH_LIBRARY(llmaas, m) {
  m.def("lora_shrink(Tensor x, Tensor[] weights, Tensor(a!)[] outputs, Tensor indices, float scale) -> ()");
  m.def(
      "lora_expand(Tensor[] inputs, Tensor[] weights, Tensor(a!) output, Tensor indices, int offset_start, "
      "int[] slice_sizes, bool add_inputs) -> ()");
  m.def(
      "lora_linear(Tensor(a!) output, Tensor x, Tensor[] lora_a, Tensor[] lora_b, Tensor indices, float scale, "
      "int offset_start, int[] slice_sizes) -> ()");
  m.def("isa() -> str", &isa);
  m.def("cache_stats() -> int[]", &cache_stats);
  m.def("cache_clear() -> ()", &cache_clear);
}

TORCH_LIBRARY_IMPL(llmaas, CPU, m) {
  m.impl("lora_shrink", &lora_shrink);
  m.impl("lora_expand", &lora_expand);
  m.impl("lora_linear", &lora_linear);
}

// The same ops as plain Python functions (the eager fast path: no dispatcher, no boxing). The GIL stays held:
// the calls are tens of microseconds, shorter than handing the GIL to another thread and taking it back.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "LLMaaS multi-LoRA kernels for the CPU (see engine/kernels/__init__.py)";
  m.def("lora_shrink", [](const at::Tensor& x, const std::vector<at::Tensor>& weights,
                          const std::vector<at::Tensor>& outputs, const at::Tensor& indices,
                          double scale) { lora_shrink(x, weights, outputs, indices, scale); });
  m.def("lora_expand", [](const std::vector<at::Tensor>& inputs, const std::vector<at::Tensor>& weights,
                          const at::Tensor& output, const at::Tensor& indices, int64_t offset_start,
                          const std::vector<int64_t>& slice_sizes, bool add_inputs) {
    lora_expand(inputs, weights, output, indices, offset_start, slice_sizes, add_inputs);
  });
  m.def("lora_linear", [](const at::Tensor& output, const at::Tensor& x, const std::vector<at::Tensor>& lora_a,
                          const std::vector<at::Tensor>& lora_b, const at::Tensor& indices, double scale,
                          int64_t offset_start, const std::vector<int64_t>& slice_sizes) {
    lora_linear(output, x, lora_a, lora_b, indices, scale, offset_start, slice_sizes);
  });
}
