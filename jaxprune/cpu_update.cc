// The matrix products of plain GD as XLA:CPU custom calls (see cpu_update.py):
//
//     P = W Z^T                                    W, M: (S, F, d)  Z: (S, n, d)
//     the direct formulation's segment of GD      jaxprune_direct_steps, its loss head too:
//     W <- where(M, W - Dn Z - [k < s] ds, 0)      Dn, P: (S, F, n)  ds: (S, F, 1)
//     Y_f = K_f A_f                                K_f: symmetric n x n, upper triangles
//     the kernel formulation's segment of GD      jaxprune_kernel_steps, its loss head, P and
//                                                 the update too
//     JAX's threefry2x32 hash                     jaxprune_threefry2x32
//
// Runs are independent: each segment call gives a thread a run (or a block of runs) to take
// through all the steps while its data stay in the core's caches. The update is an sgemm with
// beta = 1 into W itself, then the support shift and the mask (on CPUs with AVX2 and FMA but
// not AVX-512, our own kernel with both fused: UpdateRowsAvx2); P is an sgemm too, or on CPUs
// with AVX-512, or AVX2 and FMA, where it pays, our own kernel (ProjectRows). The work runs on
// XLA's intra-op threads. sgemm is an ILP64 cblas_sgemm found at run time (numpy's OpenBLAS)
// and handed over by jaxprune_set_blas before the first call.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <numeric>
#include <string>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using Sgemm = void (*)(int order, int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                       float alpha, const float* a, int64_t lda, const float* b, int64_t ldb,
                       float beta, float* c, int64_t ldc);
// CBLAS_ORDER and CBLAS_TRANSPOSE values.
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

Sgemm sgemm = nullptr;
void (*set_blas_threads)(int) = nullptr;  // openblas_set_num_threads
int (*get_blas_threads)() = nullptr;      // openblas_get_num_threads

// One row of W after its product: subtract ds on the signal support, then zero the pruned
// entries. The mask is applied to the float's bits (AND with 0 or ~0): a select on a bool
// does not vectorize with GCC 12 and ran 17x slower on random masks.
inline __attribute__((always_inline)) void MaskRowBody(float* row, const uint8_t* keep,
                                                       float shift, int64_t support, int64_t d) {
  for (int64_t k = 0; k < support; ++k) row[k] -= shift;
  uint32_t* bits = reinterpret_cast<uint32_t*>(row);  // built with -fno-strict-aliasing
  for (int64_t k = 0; k < d; ++k) bits[k] &= 0u - static_cast<uint32_t>(keep[k]);
}

void MaskRow(float* row, const uint8_t* keep, float shift, int64_t support, int64_t d) {
  MaskRowBody(row, keep, shift, support, d);
}

// The blocks of one call and how far the threads working on them got. Shared with the pool's
// tasks: a task that starts after the caller has finished finds no block left.
struct Blocks {
  int64_t count;
  std::function<void(int64_t)> run;
  std::atomic<int64_t> next{0}, done{0};
  std::mutex mutex;
  std::condition_variable finished;

  // Takes blocks until none is left. OpenBLAS runs on one thread (XLA's pool is the
  // parallelism: OpenBLAS's own threads beside XLA's ran the step 2.5x slower on 2 cores):
  // ParallelFor sets that and puts the old count back; a thread sets it again before its
  // first block in case an OpenBLAS ever keeps the count per thread.
  void Work() {
    int64_t ran = 0;
    for (int64_t i; (i = next.fetch_add(1)) < count; ++ran) {
      if (ran == 0) set_blas_threads(1);
      run(i);
    }
    if (ran > 0 && done.fetch_add(ran) + ran == count) {
      std::lock_guard<std::mutex> lock(mutex);
      finished.notify_all();
    }
  }
};

// OpenBLAS's thread count is one global (openblas_set_num_threads_local, where OpenBLAS has it,
// sets it too): the first of the calls running at a time sets it to 1 and the last one to end
// puts back what the first found. A thread, or a call, that put back what it had read could
// leave it at 1, the count another had set, and numpy's products on one thread for the rest
// of the process (XLA may run two programs' calls at once).
class OneBlasThread {
 public:
  OneBlasThread() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (callers_++ == 0) {
      found_ = get_blas_threads();
      set_blas_threads(1);
    }
  }
  ~OneBlasThread() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (--callers_ == 0) set_blas_threads(found_);
  }

 private:
  static inline std::mutex mutex_;
  static inline int callers_ = 0, found_ = 1;
};

// run(0), ..., run(count - 1) on the caller and XLA's intra-op threads; returns when all ran,
// with OpenBLAS on one thread meanwhile.
void ParallelFor(ffi::ThreadPool& pool, int64_t count, std::function<void(int64_t)> run) {
  const OneBlasThread one_thread;
  auto blocks = std::make_shared<Blocks>();
  blocks->count = count;
  blocks->run = std::move(run);
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), count) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([blocks] { blocks->Work(); });
  blocks->Work();
  {
    std::unique_lock<std::mutex> lock(blocks->mutex);
    blocks->finished.wait(lock, [&] { return blocks->done.load() == count; });
  }
}

// P = C Z^T for a block of rows C (count, d), by our own AVX-512 kernel (AVX2's and
// ProjectRows, which picks the CPU's, follow it). OpenBLAS's sgemm ran this shape (Z's n = 100
// rows against a block of 100 to several hundred rows of W, d = 1000) at 70-85 % of its
// square products' speed on one thread, this kernel at 95-98 % (benchmarks/thin_products.py);
// the step ran 1.04-1.13x faster (benchmarks/RESULTS.md).
// Z's first `wide` = 16 floor(n / 16) rows are packed transposed (PackNoise, once per call or
// per block) in panels of up to kPanel columns; each tile of kTileRows rows of C keeps its
// part of P in registers (8 x 3 of the 32 vector registers: per column of the panel, 3 loads
// and 8 broadcasts feed 24 FMAs) while it streams its rows of C and the panel once. The
// n - wide last columns are dot products of 4 rows at a time with Z's last rows (DotTile),
// summed across the vector lanes at the end.
constexpr int64_t kTileRows = 8, kPanelVectors = 3, kPanel = 16 * kPanelVectors;

// Where our kernel runs instead of sgemm (the `projection` attribute).
enum Projection : int64_t { kBlas = 0, kOwnWherePays = 1, kOwn = 2 };

// Where our kernel pays ("auto"; benchmarks/RESULTS.md, 2026-12-06, 03:06 UTC and 19:20 UTC):
// with at least one panel (n >= 16) it ran 1.2-2.0x sgemm's speed for n = 16 to 100 (its dot
// tiles for the last n mod 16 columns too, since they keep their sums in registers); below,
// with dot tiles only, sgemm was faster at n = 4-8 on 100 rows of W or fewer, and at n = 12
// on 40; and where a block has at least kOwnMinBlockRows rows (sgemm was 2.4x faster on 8
// rows, 0.63x as fast on 16, 0.82x on 100).
constexpr int64_t kOwnMinBlockRows = 32;

bool OwnPays(int64_t n) { return n >= 16; }

#if defined(__x86_64__)
#define JAXPRUNE_AVX512 __attribute__((target("avx512f")))
#define JAXPRUNE_AVX2 __attribute__((target("avx2")))
#define JAXPRUNE_AVX2_FMA __attribute__((target("avx2,fma")))

// Whether the AVX-512 builds run: where the CPU has AVX-512, unless JAXPRUNE_NO_AVX512 is set
// (then the AVX2 builds run, as on a CPU without it: the tests check them that way too).
bool HasAvx512() {
  static const bool runs =
      __builtin_cpu_supports("avx512f") && std::getenv("JAXPRUNE_NO_AVX512") == nullptr;
  return runs;
}

// Whether ProjectRows runs on this CPU: AVX-512, or AVX2 with FMA (ProjectRowsAvx2).
bool OwnKernelRuns() {
  return HasAvx512() || (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"));
}

// Transposes the 16 x 16 block r[0..15] (rows) in place: r[x] becomes column x.
JAXPRUNE_AVX512 void Transpose16(__m512* r) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 2]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 1]), d = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0x88);
    t[4 + i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0xDD);
    t[8 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0x88);
    t[12 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0xDD);
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0x88);
    r[8 + i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0xDD);
  }
}

// zt: Z's first `wide` rows (a multiple of 16) as panels of up to kPanel columns; the panel
// of columns [k0, k0 + w) is (d, w) row-major at zt + k0 d. In 16 x 16 blocks transposed in
// registers (a pack of Z (100, 1000) took 29 us one float at a time, in cache).
JAXPRUNE_AVX512 void PackNoiseAvx512(const float* z, int64_t wide, int64_t d, float* zt) {
  const int64_t full = d / 16 * 16;
  for (int64_t k0 = 0; k0 < wide; k0 += kPanel) {
    const int64_t w = std::min(kPanel, wide - k0);
    float* panel = zt + k0 * d;
    for (int64_t k = 0; k < w; k += 16) {
      for (int64_t j = 0; j < full; j += 16) {
        __m512 r[16];
        for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(z + (k0 + k + i) * d + j);
        Transpose16(r);
        for (int i = 0; i < 16; ++i) _mm512_storeu_ps(panel + (j + i) * w + k, r[i]);
      }
      for (int64_t j = full; j < d; ++j) {
        for (int64_t i = 0; i < 16; ++i) panel[j * w + k + i] = z[(k0 + k + i) * d + j];
      }
    }
  }
}

// p[r, 16 v + l] = sum_j c[r, j] panel[j, 16 v + l] for r < R, v < V: R x V accumulators.
template <int R, int V>
JAXPRUNE_AVX512 void PanelTile(const float* c, const float* panel, float* p, int64_t d,
                               int64_t ldp) {
  __m512 acc[R][V];
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < V; ++v) acc[r][v] = _mm512_setzero_ps();
  }
  for (int64_t j = 0; j < d; ++j) {
    __m512 zt[V];
    for (int v = 0; v < V; ++v) zt[v] = _mm512_loadu_ps(panel + j * 16 * V + 16 * v);
    for (int r = 0; r < R; ++r) {
      const __m512 broadcast = _mm512_set1_ps(c[r * d + j]);
      for (int v = 0; v < V; ++v) acc[r][v] = _mm512_fmadd_ps(broadcast, zt[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < V; ++v) _mm512_storeu_ps(p + r * ldp + 16 * v, acc[r][v]);
  }
}

// The 16 lane sums of v[0..15], in that order: a transposing tree of adds (46 instructions
// for 16 sums, against 16 x 8 for one sum at a time).
JAXPRUNE_AVX512 __m512 LaneSums(const __m512* v) {
  __m512 x[8], y[4];
  for (int i = 0; i < 8; ++i) {  // 128-bit lanes: v[2i] (a+c, b+d), v[2i+1] (a+c, b+d)
    x[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
  }
  for (int i = 0; i < 4; ++i) {  // lane l: 4 partial sums of v[4i + l]
    y[i] = _mm512_add_ps(_mm512_shuffle_f32x4(x[2 * i], x[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(x[2 * i], x[2 * i + 1], 0xDD));
  }
  const __m512 u01 = _mm512_add_ps(_mm512_unpacklo_ps(y[0], y[1]), _mm512_unpackhi_ps(y[0], y[1]));
  const __m512 u23 = _mm512_add_ps(_mm512_unpacklo_ps(y[2], y[3]), _mm512_unpackhi_ps(y[2], y[3]));
  const __m512d a = _mm512_castps_pd(u01), b = _mm512_castps_pd(u23);
  const __m512 s = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                                 _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  // Lane l of s: the sums of v[l], v[4 + l], v[8 + l], v[12 + l].
  const __m512i order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
  return _mm512_permutexvar_ps(order, s);
}

// p[r, k] = c[r, :] . z[k][:] for r < R, k < 4 (z[k] may be a row of zeros), stored for
// k < cols. The accumulators are [R][4] and the last d mod 16 entries a step after the loop:
// with one index into 16 accumulators, or the mask of a partial step computed in the loop,
// GCC kept them in memory, stored every step, and this ran 3.5x slower.
template <int R>
JAXPRUNE_AVX512 void DotTile(const float* c, const float* const* z, float* p, int64_t d,
                             int64_t ldp, int64_t cols) {
  __m512 acc[R][4];
  for (int r = 0; r < R; ++r) {
    for (int k = 0; k < 4; ++k) acc[r][k] = _mm512_setzero_ps();
  }
  int64_t j = 0;
  for (; j + 16 <= d; j += 16) {
    __m512 zk[4];
    for (int k = 0; k < 4; ++k) zk[k] = _mm512_loadu_ps(z[k] + j);
    for (int r = 0; r < R; ++r) {
      const __m512 cr = _mm512_loadu_ps(c + r * d + j);
      for (int k = 0; k < 4; ++k) acc[r][k] = _mm512_fmadd_ps(cr, zk[k], acc[r][k]);
    }
  }
  if (j < d) {
    const __mmask16 in = static_cast<__mmask16>((1u << (d - j)) - 1);
    __m512 zk[4];
    for (int k = 0; k < 4; ++k) zk[k] = _mm512_maskz_loadu_ps(in, z[k] + j);
    for (int r = 0; r < R; ++r) {
      const __m512 cr = _mm512_maskz_loadu_ps(in, c + r * d + j);
      for (int k = 0; k < 4; ++k) acc[r][k] = _mm512_fmadd_ps(cr, zk[k], acc[r][k]);
    }
  }
  __m512 all[16];
  for (int i = 0; i < 16; ++i) all[i] = i < 4 * R ? acc[i / 4][i % 4] : _mm512_setzero_ps();
  alignas(64) float sums[16];
  _mm512_store_ps(sums, LaneSums(all));
  for (int r = 0; r < R; ++r) std::copy_n(sums + 4 * r, cols, p + r * ldp);
}

template <int R>
JAXPRUNE_AVX512 void DotRows(const float* c, const float* const* z, float* p, int64_t d,
                             int64_t ldp, int64_t cols) {
  if constexpr (R > 4) {
    DotTile<4>(c, z, p, d, ldp, cols);
    DotRows<R - 4>(c + 4 * d, z, p + 4 * ldp, d, ldp, cols);
  } else {
    DotTile<R>(c, z, p, d, ldp, cols);
  }
}

template <int R>
JAXPRUNE_AVX512 void PanelTileOf(int64_t vectors, const float* c, const float* panel, float* p,
                                 int64_t d, int64_t ldp) {
  switch (vectors) {
    case 1: return PanelTile<R, 1>(c, panel, p, d, ldp);
    case 2: return PanelTile<R, 2>(c, panel, p, d, ldp);
    default: return PanelTile<R, kPanelVectors>(c, panel, p, d, ldp);
  }
}

// All n columns of P (rows ldp apart) for R rows of C: the panels, then the last n - wide.
template <int R>
JAXPRUNE_AVX512 void TileRows(const float* c, const float* z, const float* zt,
                              const float* zeros, float* p, int64_t n, int64_t d, int64_t ldp) {
  const int64_t wide = n / 16 * 16;
  for (int64_t k0 = 0; k0 < wide; k0 += kPanel) {
    PanelTileOf<R>(std::min(kPanel, wide - k0) / 16, c, zt + k0 * d, p + k0, d, ldp);
  }
  for (int64_t k0 = wide; k0 < n; k0 += 4) {
    const float* rows[4];
    for (int k = 0; k < 4; ++k) rows[k] = k0 + k < n ? z + (k0 + k) * d : zeros;
    DotRows<R>(c, rows, p + k0, d, ldp, std::min<int64_t>(4, n - k0));
  }
}

// ProjectRows with AVX-512.
void ProjectRowsAvx512(const float* c, int64_t count, const float* z, const float* zt,
                       const float* zeros, float* p, int64_t n, int64_t d, int64_t ldp) {
  int64_t r = 0;
  for (; r + kTileRows <= count; r += kTileRows) {
    TileRows<kTileRows>(c + r * d, z, zt, zeros, p + r * ldp, n, d, ldp);
  }
  for (; count - r >= 4; r += 4) TileRows<4>(c + r * d, z, zt, zeros, p + r * ldp, n, d, ldp);
  switch (count - r) {
    case 1: return TileRows<1>(c + r * d, z, zt, zeros, p + r * ldp, n, d, ldp);
    case 2: return TileRows<2>(c + r * d, z, zt, zeros, p + r * ldp, n, d, ldp);
    case 3: return TileRows<3>(c + r * d, z, zt, zeros, p + r * ldp, n, d, ldp);
    default: return;
  }
}

// The same product with AVX2's 16 vector registers of 8 floats: tiles of kTileRowsAvx2 = 6
// rows against panels of kPanelAvx2 = 16 columns (12 accumulators; per column of the panel, 2
// loads and 6 broadcasts feed 12 FMAs; tiles of 4 rows and panels of 24 ran 0.97-1.03x
// OpenBLAS at d = 1000, these 1.07-1.10x, benchmarks/thin_products.py). Z is packed whole, its
// n rows padded with zero rows to a multiple of 8; the padding's columns are not stored.
constexpr int64_t kTileRowsAvx2 = 6, kPanelAvx2 = 16;

int64_t PackedWidthAvx2(int64_t n) { return (n + 7) / 8 * 8; }

// Rows r[0..7] transposed in registers: r[i] becomes column i of the 8 x 8 block.
JAXPRUNE_AVX2 void Transpose8(__m256* r) {
  __m256 t[8], s[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int h = 0; h < 8; h += 4) {
    s[h] = _mm256_shuffle_ps(t[h], t[h + 2], _MM_SHUFFLE(1, 0, 1, 0));
    s[h + 1] = _mm256_shuffle_ps(t[h], t[h + 2], _MM_SHUFFLE(3, 2, 3, 2));
    s[h + 2] = _mm256_shuffle_ps(t[h + 1], t[h + 3], _MM_SHUFFLE(1, 0, 1, 0));
    s[h + 3] = _mm256_shuffle_ps(t[h + 1], t[h + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(s[i], s[4 + i], 0x20);
    r[4 + i] = _mm256_permute2f128_ps(s[i], s[4 + i], 0x31);
  }
}

// Z's rows as panels of kPanelAvx2 columns, in 8 x 8 blocks transposed in registers where 8
// rows are real; the zero rows of the padding and the last d mod 8 columns one float at a time.
JAXPRUNE_AVX2 void PackNoiseAvx2(const float* z, int64_t n, int64_t d, float* zt) {
  const int64_t wide = PackedWidthAvx2(n), full = d / 8 * 8;
  for (int64_t k0 = 0; k0 < wide; k0 += kPanelAvx2) {
    const int64_t w = std::min(kPanelAvx2, wide - k0);
    float* panel = zt + k0 * d;
    for (int64_t k = 0; k < w; k += 8) {
      const float* rows = z + (k0 + k) * d;
      const int64_t real = std::min<int64_t>(8, n - k0 - k);
      int64_t j = 0;
      for (; real == 8 && j < full; j += 8) {
        __m256 r[8];
        for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(rows + i * d + j);
        Transpose8(r);
        for (int i = 0; i < 8; ++i) _mm256_storeu_ps(panel + (j + i) * w + k, r[i]);
      }
      for (; j < d; ++j) {
        for (int64_t i = 0; i < 8; ++i) panel[j * w + k + i] = i < real ? rows[i * d + j] : 0.0f;
      }
    }
  }
}

// p[r, 8 v + l] = sum_j c[r, j] panel[j, 8 v + l] for r < R, v < V, stored for 8 v + l < cols.
template <int R, int V>
JAXPRUNE_AVX2_FMA void PanelTileAvx2(const float* c, const float* panel, float* p, int64_t d,
                                     int64_t ldp, int64_t cols) {
  __m256 acc[R][V];
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < V; ++v) acc[r][v] = _mm256_setzero_ps();
  }
  for (int64_t j = 0; j < d; ++j) {
    __m256 zt[V];
    for (int v = 0; v < V; ++v) zt[v] = _mm256_loadu_ps(panel + j * 8 * V + 8 * v);
    for (int r = 0; r < R; ++r) {
      const __m256 broadcast = _mm256_set1_ps(c[r * d + j]);
      for (int v = 0; v < V; ++v) acc[r][v] = _mm256_fmadd_ps(broadcast, zt[v], acc[r][v]);
    }
  }
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int v = 0; v < V; ++v) {
    const int64_t left = cols - 8 * v;
    const __m256i stored = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(left)), lanes);
    for (int r = 0; r < R; ++r) {
      if (left >= 8) {
        _mm256_storeu_ps(p + r * ldp + 8 * v, acc[r][v]);
      } else if (left > 0) {
        _mm256_maskstore_ps(p + r * ldp + 8 * v, stored, acc[r][v]);
      }
    }
  }
}

template <int R>
JAXPRUNE_AVX2_FMA void TileRowsAvx2(const float* c, const float* zt, float* p, int64_t n,
                                    int64_t d, int64_t ldp) {
  const int64_t wide = PackedWidthAvx2(n);
  for (int64_t k0 = 0; k0 < wide; k0 += kPanelAvx2) {
    const float* panel = zt + k0 * d;
    const int64_t cols = std::min(kPanelAvx2, n - k0);
    if (wide - k0 >= kPanelAvx2) {
      PanelTileAvx2<R, 2>(c, panel, p + k0, d, ldp, cols);
    } else {
      PanelTileAvx2<R, 1>(c, panel, p + k0, d, ldp, cols);
    }
  }
}

void ProjectRowsAvx2(const float* c, int64_t count, const float* zt, float* p, int64_t n,
                     int64_t d, int64_t ldp) {
  int64_t r = 0;
  for (; r + kTileRowsAvx2 <= count; r += kTileRowsAvx2) {
    TileRowsAvx2<kTileRowsAvx2>(c + r * d, zt, p + r * ldp, n, d, ldp);
  }
  for (; count - r >= 4; r += 4) TileRowsAvx2<4>(c + r * d, zt, p + r * ldp, n, d, ldp);
  switch (count - r) {
    case 1: return TileRowsAvx2<1>(c + r * d, zt, p + r * ldp, n, d, ldp);
    case 2: return TileRowsAvx2<2>(c + r * d, zt, p + r * ldp, n, d, ldp);
    case 3: return TileRowsAvx2<3>(c + r * d, zt, p + r * ldp, n, d, ldp);
    default: return;
  }
}

// The direct step's update with AVX2 and FMA, fused with the support shift and the mask:
// w[r, j] <- keep[r, j] ? w[r, j] - sum_k delta[r, k] z[k, j] - [j < support] shift_r : +0.0,
// shift_r = delta[r, n]. Z is packed once per segment in panels of 16 columns (zp, by
// PackNoiseColumns); a tile of R rows keeps its 16 columns' sums in 2 R registers (per k, 2
// loads and R broadcasts feed 2 R FMAs) and takes all the panels while its rows of delta stay
// in the L1 cache. Each sum runs over k in order and is then subtracted, as sgemm forms
// w + (-1) (delta z). sgemm packed Z and delta every call, and the mask was a second pass
// over w: the direct step ran 1.01-1.04x faster at the paper's sizes, 1.09-1.12x at the
// quick sweep's (benchmarks/RESULTS.md). Read in place, Z's rows d apart (a TLB entry each
// per k) ran it 0.73-0.91x as fast.
template <int R>
JAXPRUNE_AVX2_FMA void UpdateTileAvx2(float* w, int64_t ldw, const uint8_t* keep,
                                      int64_t ldk, const float* delta, int64_t ldd,
                                      const float* panel, int64_t n, int64_t support) {
  __m256 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < n; ++k) {
    const __m256 z0 = _mm256_loadu_ps(panel + 16 * k), z1 = _mm256_loadu_ps(panel + 16 * k + 8);
    for (int r = 0; r < R; ++r) {
      const __m256 broadcast = _mm256_set1_ps(delta[r * ldd + k]);
      acc[r][0] = _mm256_fmadd_ps(broadcast, z0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(broadcast, z1, acc[r][1]);
    }
  }
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int v = 0; v < 2; ++v) {
    const __m256 on_support = _mm256_castsi256_ps(_mm256_cmpgt_epi32(
        _mm256_set1_epi32(static_cast<int>(std::min<int64_t>(support, 16)) - 8 * v), lanes));
    for (int r = 0; r < R; ++r) {
      float* row = w + r * ldw + 8 * v;
      __m256 x = _mm256_sub_ps(_mm256_loadu_ps(row), acc[r][v]);
      if (support > 8 * v) {
        const __m256 shifted = _mm256_sub_ps(x, _mm256_set1_ps(delta[r * ldd + n]));
        x = _mm256_blendv_ps(x, shifted, on_support);
      }
      const __m256i bytes = _mm256_cvtepu8_epi32(
          _mm_loadl_epi64(reinterpret_cast<const __m128i*>(keep + r * ldk + 8 * v)));
      const __m256 kept = _mm256_castsi256_ps(_mm256_cmpgt_epi32(bytes, _mm256_setzero_si256()));
      _mm256_storeu_ps(row, _mm256_and_ps(x, kept));
    }
  }
}

// zp (ceil(d / 16) 16 n floats): Z (n, d) as panels of 16 columns, each (n, 16) row-major,
// the last zero-padded.
void PackNoiseColumns(const float* z, int64_t n, int64_t d, float* zp) {
  for (int64_t j0 = 0; j0 < d; j0 += 16) {
    const int64_t cols = std::min<int64_t>(16, d - j0);
    float* panel = zp + j0 * n;
    for (int64_t k = 0; k < n; ++k) {
      std::copy_n(z + k * d + j0, cols, panel + k * 16);
      std::fill(panel + k * 16 + cols, panel + (k + 1) * 16, 0.0f);
    }
  }
}

// R rows (d apart) across all the panels; the last d mod 16 columns through zero-padded
// copies of their w and keep.
template <int R>
JAXPRUNE_AVX2_FMA void UpdateTileRowsAvx2(float* w, const uint8_t* keep, const float* delta,
                                          int64_t ldd, const float* zp, int64_t n, int64_t d,
                                          int64_t support) {
  const int64_t full = d / 16 * 16, cols = d - full;
  for (int64_t j0 = 0; j0 < full; j0 += 16) {
    UpdateTileAvx2<R>(w + j0, d, keep + j0, d, delta, ldd, zp + j0 * n, n, support - j0);
  }
  if (cols == 0) return;
  float tile[R * 16] = {};
  uint8_t bytes[R * 16] = {};
  for (int r = 0; r < R; ++r) {
    std::copy_n(w + r * d + full, cols, tile + r * 16);
    std::copy_n(keep + r * d + full, cols, bytes + r * 16);
  }
  UpdateTileAvx2<R>(tile, 16, bytes, 16, delta, ldd, zp + full * n, n, support - full);
  for (int r = 0; r < R; ++r) std::copy_n(tile + r * 16, cols, w + r * d + full);
}

// The update of `rows` rows of w (rows d apart) from their delta (rows ldd apart, [Dn, ds]);
// zp: Z packed by PackNoiseColumns.
void UpdateRowsAvx2(float* w, const uint8_t* keep, int64_t rows, const float* delta,
                    int64_t ldd, const float* zp, int64_t n, int64_t d, int64_t support) {
  int64_t r = 0;
  for (; r + kTileRowsAvx2 <= rows; r += kTileRowsAvx2) {
    UpdateTileRowsAvx2<kTileRowsAvx2>(w + r * d, keep + r * d, delta + r * ldd, ldd, zp, n, d,
                                      support);
  }
  const auto tile = [&](auto update) {
    update(w + r * d, keep + r * d, delta + r * ldd, ldd, zp, n, d, support);
  };
  switch (rows - r) {
    case 1: return tile(UpdateTileRowsAvx2<1>);
    case 2: return tile(UpdateTileRowsAvx2<2>);
    case 3: return tile(UpdateTileRowsAvx2<3>);
    case 4: return tile(UpdateTileRowsAvx2<4>);
    case 5: return tile(UpdateTileRowsAvx2<5>);
    default: return;
  }
}

// The floats of Z's packed rows a kernel reads (times d): 16 floor(n / 16) for AVX-512's,
// whose dot tiles read the last rows in place, n rounded up to 8 for AVX2's.
int64_t PackedWidth(int64_t n) { return HasAvx512() ? n / 16 * 16 : PackedWidthAvx2(n); }

// zt (PackedWidth(n) x d floats): Z (n, d) packed for ProjectRows.
void PackNoise(const float* z, int64_t n, int64_t d, float* zt) {
  if (HasAvx512()) return PackNoiseAvx512(z, n / 16 * 16, d, zt);
  PackNoiseAvx2(z, n, d, zt);
}

// p (count, n) = c (count, d) z (n, d)^T, p's rows ldp apart; zt: z packed by PackNoise;
// zeros: d zeros. Each entry is one sum over d in order, whatever rows and columns share the
// call: the same bits in any batch.
void ProjectRows(const float* c, int64_t count, const float* z, const float* zt,
                 const float* zeros, float* p, int64_t n, int64_t d, int64_t ldp) {
  if (HasAvx512()) return ProjectRowsAvx512(c, count, z, zt, zeros, p, n, d, ldp);
  ProjectRowsAvx2(c, count, zt, p, n, d, ldp);
}
#else
bool HasAvx512() { return false; }
bool OwnKernelRuns() { return false; }
int64_t PackedWidth(int64_t) { return 0; }
void PackNoise(const float*, int64_t, int64_t, float*) {}
void PackNoiseColumns(const float*, int64_t, int64_t, float*) {}
void UpdateRowsAvx2(float*, const uint8_t*, int64_t, const float*, int64_t, const float*,
                    int64_t, int64_t, int64_t) {}
void ProjectRows(const float*, int64_t, const float*, const float*, const float*, float*,
                 int64_t, int64_t, int64_t) {}
#endif

// The rows of each of S matrices of `rows` rows, cut into blocks of equal size of about
// `block_bytes` (`row_bytes` a row), never across matrices.
struct RowBlocks {
  struct Block {
    int64_t group, first, count;  // first: a row index over all S matrices
  };
  int64_t rows, per_group, size;

  RowBlocks(int64_t rows, int64_t row_bytes, int64_t block_bytes)
      : rows(rows),
        per_group(std::max<int64_t>(1, (rows * row_bytes + block_bytes - 1) / block_bytes)),
        size((rows + per_group - 1) / per_group) {}

  Block operator[](int64_t i) const {
    const int64_t group = i / per_group, r = (i % per_group) * size;
    return {group, group * rows + r, std::max<int64_t>(0, std::min(size, rows - r))};
  }
};

// The projections of a call: by sgemm, or by ProjectRows from Z packed once here, each
// column block of each group, where a group's rows take more than one block (so that no
// block packs what another packs again), else packed by each block.
class Projector {
 public:
  Projector(ffi::ThreadPool& pool, int64_t projection, const float* z, int64_t groups,
            const RowBlocks& blocks, int64_t n, int64_t d, int64_t columns)
      : z_(z), n_(n), d_(d), columns_(columns), column_blocks_((n + columns - 1) / columns),
        packed_floats_(PackedWidth(columns) * d), forced_(projection == kOwn),
        own_(OwnKernelRuns() && (forced_ || (projection == kOwnWherePays && OwnPays(n)))),
        packed_once_(own_ && blocks.per_group > 1 &&
                     (forced_ || blocks.size >= kOwnMinBlockRows)) {
    if (!own_) return;
    zeros_.assign(d, 0.0f);
    if (!packed_once_) return;
    zt_.resize(groups * column_blocks_ * packed_floats_);
    ParallelFor(pool, groups * column_blocks_, [this](int64_t i) {
      const int64_t g = i / column_blocks_, k0 = i % column_blocks_ * columns_;
      PackNoise(z_ + (g * n_ + k0) * d_, std::min(columns_, n_ - k0), d_,
                zt_.data() + i * packed_floats_);
    });
  }

  // Columns k0 .. k0 + cols - 1 (k0 a multiple of `columns`) of p (count, n) = c (count, d)
  // Z_g^T.
  void operator()(int64_t g, const float* c, int64_t count, float* p, int64_t k0,
                  int64_t cols) const {
    const float* z = z_ + (g * n_ + k0) * d_;
    if (packed_once_) {
      const float* zt = zt_.data() + (g * column_blocks_ + k0 / columns_) * packed_floats_;
      ProjectRows(c, count, z, zt, zeros_.data(), p + k0, cols, d_, n_);
    } else if (own_ && (forced_ || count >= kOwnMinBlockRows)) {
      thread_local std::vector<float> zt;
      zt.resize(PackedWidth(cols) * d_);
      PackNoise(z, cols, d_, zt.data());
      ProjectRows(c, count, z, zt.data(), zeros_.data(), p + k0, cols, d_, n_);
    } else {
      sgemm(kRowMajor, kNoTrans, kTrans, count, cols, d_, 1.0f, c, d_, z, d_, 0.0f, p + k0, n_);
    }
  }

 private:
  const float* z_;
  int64_t n_, d_, columns_, column_blocks_, packed_floats_;
  bool forced_, own_, packed_once_;
  std::vector<float> zt_, zeros_;
};

// L floats as one vector (GCC's vector extension: one register where the target has one
// that wide, else as many as it takes), read and written unaligned through At.
template <int L>
struct Lanes {
  typedef float Vector __attribute__((vector_size(4 * L), aligned(4)));
  static Vector& At(float* p) { return *reinterpret_cast<Vector*>(p); }
  static const Vector& At(const float* p) { return *reinterpret_cast<const Vector*>(p); }
};

// Rows i0 .. i0 + B - 1 of the L interleaved triangles (see SymmetricBody), `upper` at row
// i0's first entry: first each row's entries inside the block, row by row, then the columns
// past the block for the B rows at once, so that yt[j] is read and written once per B rows
// and the B dot products are B chains of adds that run side by side (with one row at a time
// the loop waited on its one chain; 4 rows at a time ran the kernel formulation's step
// 1.09-1.15x faster, ``benchmarks/RESULTS.md``). Every sum is formed in the order of one row
// at a time: the same numbers for any B.
template <int L, int B>
inline __attribute__((always_inline)) void SymmetricRows(
    const float* __restrict__ upper, int64_t i0, int64_t n, const float* __restrict__ at,
    float* __restrict__ yt) {
  using V = Lanes<L>;
  const float* row[B];  // row[r] + j * L: K[i0 + r, j] of the L matrices, for j >= i0 + r
  typename V::Vector a_i[B], dot[B];
  for (int r = 0; r < B; ++r) {
    row[r] = upper - (i0 + r) * L;
    upper += (n - i0 - r) * L;
  }
  for (int r = 0; r < B; ++r) {
    const int64_t i = i0 + r;
    a_i[r] = V::At(at + i * L);
    dot[r] = V::At(row[r] + i * L) * a_i[r];
    for (int64_t j = i + 1; j < i0 + B; ++j) {
      const auto k = V::At(row[r] + j * L);
      V::At(yt + j * L) += k * a_i[r];
      dot[r] += k * V::At(at + j * L);
    }
  }
  for (int64_t j = i0 + B; j < n; ++j) {
    auto sum = V::At(yt + j * L);
    const auto a_j = V::At(at + j * L);
    for (int r = 0; r < B; ++r) {
      const auto k = V::At(row[r] + j * L);
      sum += k * a_i[r];
      dot[r] += k * a_j;
    }
    V::At(yt + j * L) = sum;
  }
  for (int r = 0; r < B; ++r) {
    V::At(yt + (i0 + r) * L) += dot[r];
  }
}

// y_l = K_l a_l for L symmetric n x n matrices K_l given by their upper triangles, row by row
// (K[0, 0..n-1], K[1, 1..n-1], ...) with the L matrices' entries interleaved (entry e of K_l
// at upper[e * L + l]): each stored entry is read once and serves K[i, j] and K[j, i], so the
// product reads half the bytes of the full matrices (the kernel formulation's step reads
// nothing else from memory), and every operation is on L lanes at once, whatever the length
// of the triangle's row (one matrix at a time, along those short rows, the product ran
// 1.2-1.3x slower: ``benchmarks/RESULTS.md``). Rows go kSymmetricRows at a time.
// a, y: (L, n) as the filters' rows; at, yt: scratch of n * L floats, the same transposed.
constexpr int kSymmetricRows = 4;

template <int L>
inline __attribute__((always_inline)) void SymmetricBody(
    const float* __restrict__ upper, const float* __restrict__ a, float* __restrict__ y,
    int64_t n, float* __restrict__ at, float* __restrict__ yt) {
  for (int64_t i = 0; i < n; ++i) {
    for (int l = 0; l < L; ++l) at[i * L + l] = a[l * n + i];
  }
  std::fill_n(yt, n * L, 0.0f);
  int64_t i = 0;
  for (; i + kSymmetricRows <= n; i += kSymmetricRows) {
    SymmetricRows<L, kSymmetricRows>(upper, i, n, at, yt);
    upper += (kSymmetricRows * (n - i) - kSymmetricRows * (kSymmetricRows - 1) / 2) * L;
  }
  for (; i < n; ++i) {
    SymmetricRows<L, 1>(upper, i, n, at, yt);
    upper += (n - i) * L;
  }
  for (int64_t j = 0; j < n; ++j) {
    for (int l = 0; l < L; ++l) y[l * n + j] = yt[j * L + l];
  }
}

// SymmetricBody compiled for the build's baseline (SSE2 on x86-64), for AVX2, whose 8-float
// vectors hold 8 lanes in one register, and for AVX-512, whose 16-float ones hold 16: the
// same operations in the same order, so the same numbers (the build does not contract them
// into FMAs: -ffp-contract=off).
template <int L>
void SymmetricLanes(const float* __restrict__ upper, const float* __restrict__ a,
                    float* __restrict__ y, int64_t n, float* __restrict__ at,
                    float* __restrict__ yt) {
  SymmetricBody<L>(upper, a, y, n, at, yt);
}

using SymmetricKernel = void (*)(const float*, const float*, float*, int64_t, float*, float*);

#if defined(__x86_64__)
template <int L>
JAXPRUNE_AVX2 void SymmetricLanesAvx2(
    const float* __restrict__ upper, const float* __restrict__ a, float* __restrict__ y,
    int64_t n, float* __restrict__ at, float* __restrict__ yt) {
  SymmetricBody<L>(upper, a, y, n, at, yt);
}

template <int L>
JAXPRUNE_AVX512 void SymmetricLanesAvx512(
    const float* __restrict__ upper, const float* __restrict__ a, float* __restrict__ y,
    int64_t n, float* __restrict__ at, float* __restrict__ yt) {
  SymmetricBody<L>(upper, a, y, n, at, yt);
}
#endif

#if defined(__x86_64__)
// 16 floats at a time: their 16 mask bytes widened (vpmovzxbd), tested into a mask register
// and the row reloaded under it (pruned entries +0.0, the bits of the AND).
JAXPRUNE_AVX512 void MaskRowAvx512(float* row, const uint8_t* keep, float shift,
                                   int64_t support, int64_t d) {
  for (int64_t k = 0; k < support; ++k) row[k] -= shift;
  int64_t k = 0;
  for (; k + 16 <= d; k += 16) {
    const __m512i bytes =
        _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(keep + k)));
    _mm512_storeu_ps(row + k, _mm512_maskz_loadu_ps(_mm512_test_epi32_mask(bytes, bytes),
                                                    row + k));
  }
  MaskRow(row + k, keep + k, 0.0f, 0, d - k);
}

JAXPRUNE_AVX2 void MaskRowAvx2(float* row, const uint8_t* keep, float shift, int64_t support,
                               int64_t d) {
  MaskRowBody(row, keep, shift, support, d);
}
#endif

using MaskRowKernel = void (*)(float*, const uint8_t*, float, int64_t, int64_t);

// MaskRow for this CPU. The baseline build (SSE2: 4 floats a vector, 13 instructions to widen
// 16 bytes of mask) took about 6 % of the direct step with one run per seed.
MaskRowKernel MaskRowFor() {
#if defined(__x86_64__)
  if (HasAvx512()) return MaskRowAvx512;
  if (__builtin_cpu_supports("avx2")) return MaskRowAvx2;
#endif
  return MaskRow;
}

// The most lanes a kernel of this CPU fills one vector with (``cpu_update.vector_lanes``).
int64_t VectorLanes() { return HasAvx512() ? 16 : 8; }

// The kernel for L lanes, or nullptr for an L it is not built for. Eight lanes fill one AVX2
// vector: that build ran the step 1.05x faster; with 4 lanes it ran 0.53x as fast as the
// baseline build, so the others keep it. Sixteen fill an AVX-512 vector: the step ran
// 1.13x faster than with 8 (``benchmarks/RESULTS.md``). ``train._gram`` gives a chunk
// VectorLanes() lanes wherever its S F filters allow.
SymmetricKernel SymmetricFor(int64_t lanes) {
  switch (lanes) {
    case 1: return SymmetricLanes<1>;
    case 2: return SymmetricLanes<2>;
    case 4: return SymmetricLanes<4>;
#if defined(__x86_64__)
    case 8: return __builtin_cpu_supports("avx2") ? SymmetricLanesAvx2<8> : SymmetricLanes<8>;
    case 16: return HasAvx512() ? SymmetricLanesAvx512<16> : nullptr;
#else
    case 8: return SymmetricLanes<8>;
#endif
    default: return nullptr;
  }
}

ffi::Error CheckBlas() {
  if (sgemm == nullptr || set_blas_threads == nullptr || get_blas_threads == nullptr) {
    return ffi::Error(ffi::ErrorCode::kFailedPrecondition, "jaxprune: BLAS was not set");
  }
  return ffi::Error::Success();
}

ffi::Error CheckReady(ffi::Span<const int64_t> dims) {
  if (auto error = CheckBlas(); error.failure()) return error;
  if (dims.size() != 3) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "jaxprune: W must be (S, F, d)");
  }
  return ffi::Error::Success();
}

// out (S, F, n) = W (S, F, d) @ Z[first + s] (n, d)^T for s < S, Z (S', n, d) with
// S' >= first + S (a slice of Z without its copy), in blocks of rows of W and, where
// `column_bytes` > 0, of rows of Z (columns of out) of about that many bytes, a multiple of
// 16: a block of W then shares the threads where it has many examples to project.
ffi::Error Projections(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> w,
                       ffi::Buffer<ffi::F32> noise, ffi::Buffer<ffi::S32> first_group,
                       ffi::ResultBuffer<ffi::F32> out, int64_t block_bytes,
                       int64_t projection, int64_t column_bytes) {
  const auto dims = w.dimensions();
  if (auto error = CheckReady(dims); error.failure()) return error;
  const int64_t groups = dims[0], rows = dims[1], d = dims[2];
  const int64_t n = noise.dimensions()[1];
  const int64_t first = *first_group.typed_data();
  if (first < 0 || first + groups > noise.dimensions()[0]) {
    return ffi::Error(ffi::ErrorCode::kOutOfRange, "jaxprune: groups past the end of Z");
  }
  const float* a = w.typed_data();
  const float* z = noise.typed_data() + first * n * d;
  float* p = out->typed_data();
  // Whole panels of kPanel columns where a block holds one, else of 16 (PanelTile's widths):
  // against XLA's, the evaluation ran 1.51x (one run per seed) and 1.10x (one seed) with
  // blocks of 128 columns (48 + 48 + 32), 1.55x and 1.15x with 96 (2,000 test examples).
  const int64_t fit = column_bytes / (d * sizeof(float));
  const int64_t columns =
      column_bytes <= 0 ? n
      : fit >= kPanel   ? std::min(n, fit / kPanel * kPanel)
                        : std::min(n, std::max<int64_t>(16, fit / 16 * 16));
  const int64_t column_blocks = (n + columns - 1) / columns;
  const RowBlocks blocks(rows, d * sizeof(float), block_bytes);
  const Projector projector(pool, projection, z, groups, blocks, n, d, columns);
  ParallelFor(pool, groups * blocks.per_group * column_blocks, [&](int64_t i) {
    const auto [g, first, count] = blocks[i / column_blocks];
    const int64_t k0 = i % column_blocks * columns;
    if (count == 0) return;
    projector(g, a + first * d, count, p + first * n, k0, std::min(columns, n - k0));
  });
  return ffi::Error::Success();
}

// out (S, F, n): out[s, f] = K[s, f] A[s, f], the upper triangles K (S, F / L, k, L) of the
// F filters of each s interleaved in groups of L (k = n (n + 1) / 2; see SymmetricLanes).
ffi::Error SymmetricProducts(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> upper,
                             ffi::Buffer<ffi::F32> a, ffi::ResultBuffer<ffi::F32> out) {
  const auto dims = a.dimensions();
  if (auto error = CheckReady(dims); error.failure()) return error;
  const auto upper_dims = upper.dimensions();
  const int64_t filters = dims[0] * dims[1], n = dims[2], packed = n * (n + 1) / 2;
  const int64_t lanes = upper_dims.size() == 4 ? upper_dims[3] : 0;
  const SymmetricKernel kernel = SymmetricFor(lanes);
  if (kernel == nullptr || upper.element_count() != filters * packed) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "jaxprune: K must be (S, F / L, n (n + 1) / 2, L), L = 1, 2, 4, 8 or "
                      "(with AVX-512) 16, "
                      "for A (S, F, n)");
  }
  const float* k = upper.typed_data();
  const float* x = a.typed_data();
  float* y = out->typed_data();
  const int64_t sets = filters / lanes;  // S F is a multiple of L: the element count says so
  // About 8 blocks a thread, so that the threads finish together, of at least 32 filters
  // (a task's overhead is that of a few filters).
  const int64_t size = std::max<int64_t>(32 / lanes, (sets + 8 * pool.num_threads() - 1) /
                                                         (8 * pool.num_threads()));
  ParallelFor(pool, (sets + size - 1) / size, [=](int64_t i) {
    std::vector<float> scratch(2 * n * lanes);
    const int64_t last = std::min(sets, (i + 1) * size);
    for (int64_t g = i * size; g < last; ++g) {
      kernel(k + g * lanes * packed, x + g * lanes * n, y + g * lanes * n, n, scratch.data(),
             scratch.data() + n * lanes);
    }
  });
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------------------------
// The kernel formulation's segment of plain GD (cpu_update.kernel_steps). Each thread takes a
// block of runs through all the segment's steps: Y = K'_f C_f for the block's filters, then
// each run's loss head on its projections P' = P0' - Y, which adds lr [dL/dP, dL/dc / sqrt(s)]
// to its C (the math of train._gd_factors); the block starts with its P0' and ends with its
// update of W (SegmentProducts, below). In XLA the head was some 20 small operations a step,
// each handed from thread to thread.

// One run's head: its 2 m filters' rows of P0', Y and C ((2 m, n + 1): [W Z^T, <W, 1_S>]).
struct RunHead {
  const float *proj0, *y;
  float *coef, *b;  // b: (2 m) where the network has biases, else nullptr
  uint8_t* diverged;
  const float* constants;      // noise_std, signal_norm, learning_rate
  const float* labels;         // (n) observed labels y_i
  const float* weights;        // (n) 1 / n for the run's examples, 0 for padding
  const float* clean;          // (n) clean labels, +1 or -1
  const float* filter_weight;  // (m) a_r, halved for mean pooling; 0 for padded filters
};

// x^Q as lax.integer_pow forms it (repeated squaring).
template <int Q>
inline float IntegerPower(float x) {
  if constexpr (Q == 1) {
    return x;
  } else if constexpr (Q % 2 == 1) {
    return x * IntegerPower<Q / 2>(x * x);
  } else {
    return IntegerPower<Q / 2>(x * x);
  }
}

// sigma(h) = max(h, 0)^q (q = Q, or `power` where Q = 0) and its derivative as JAX takes it:
// max's is 1/2 at a tie, so sigma'(0) = 1/2 for q = 1; NaN stays NaN.
template <int Q>
inline float Activation(float h, float power) {
  const float relu = h > 0.0f ? h : (h <= 0.0f ? 0.0f : h);
  if constexpr (Q == 0) {
    return std::pow(relu, power);
  } else {
    return IntegerPower<Q>(relu);
  }
}

template <int Q>
inline float Slope(float h, float power) {
  const float relu = h > 0.0f ? h : 0.0f, tie = h > 0.0f ? 1.0f : (h == 0.0f ? 0.5f : 0.0f);
  if constexpr (Q == 0) {
    return power * std::pow(relu, power - 1.0f) * tie;
  } else if constexpr (Q == 1) {
    return tie;
  } else {
    return static_cast<float>(Q) * IntegerPower<Q - 1>(relu) * tie;
  }
}

// softplus(x) = log(1 + e^x) as jax.nn.softplus forms it.
inline float Softplus(float x) {
  return std::isnan(x) ? x : std::max(x, 0.0f) + std::log1p(std::exp(-std::fabs(x)));
}

constexpr float kCleanLabels[2] = {1.0f, -1.0f};  // data.CLEAN_LABELS

// One GD step of a run's loss head (train._gd_factors): a run whose loss is not finite is
// marked diverged and, like a diverged one, left as it is. scratch: 3 n floats.
template <int Q>
inline __attribute__((always_inline)) void RunHeadStep(const RunHead& run, int64_t m,
                                                       int64_t n, float power, float root_s,
                                                       float* scratch) {
  const int64_t stride = n + 1;
  const float noise_std = run.constants[0], signal_norm = run.constants[1];
  const float learning_rate = run.constants[2];
  float* logit = scratch;  // (2, n): sum_r a_r sigma(h_jri) of class j's noise patch
  float* g = scratch + 2 * n;  // (n): dL/df_i
  float signal_logit[2][2] = {};  // [j][l]: sum_r a_r sigma(h_jr) at clean label l
  std::fill_n(logit, 2 * n, 0.0f);
  for (int j = 0; j < 2; ++j) {
    for (int64_t r = 0; r < m; ++r) {
      const int64_t f = j * m + r;
      const float *p0 = run.proj0 + f * stride, *y = run.y + f * stride;
      const float a = run.filter_weight[r], bias = run.b ? run.b[f] : 0.0f;
      for (int64_t i = 0; i < n; ++i) {
        logit[j * n + i] += Activation<Q>(noise_std * (p0[i] - y[i]) + bias, power) * a;
      }
      const float c = (p0[n] - y[n]) / root_s;
      for (int l = 0; l < 2; ++l) {
        signal_logit[j][l] +=
            Activation<Q>(c * (signal_norm * kCleanLabels[l]) + bias, power) * a;
      }
    }
  }
  float loss = 0.0f, by_label[2] = {0.0f, 0.0f};  // by_label[l]: sum of g_i over label l
  for (int64_t i = 0; i < n; ++i) {
    const float pick[2] = {run.clean[i] == kCleanLabels[0] ? 1.0f : 0.0f,
                           run.clean[i] == kCleanLabels[1] ? 1.0f : 0.0f};
    const float f = pick[0] * (signal_logit[0][0] - signal_logit[1][0]) +
                    pick[1] * (signal_logit[0][1] - signal_logit[1][1]) +
                    (logit[i] - logit[n + i]);
    const float margin = run.labels[i] * f;
    loss += run.weights[i] * Softplus(-margin);
    g[i] = -run.labels[i] * run.weights[i] / (1.0f + std::exp(margin));
    by_label[0] += pick[0] * g[i];
    by_label[1] += pick[1] * g[i];
  }
  const bool finite = std::isfinite(loss);
  if (!finite) *run.diverged = 1;
  if (!finite || *run.diverged) return;
  for (int j = 0; j < 2; ++j) {
    const float sign = kCleanLabels[j];  // class j's sign in f = F_+1 - F_-1
    for (int64_t r = 0; r < m; ++r) {
      const int64_t f = j * m + r;
      const float *p0 = run.proj0 + f * stride, *y = run.y + f * stride;
      float* coef = run.coef + f * stride;
      const float a = sign * run.filter_weight[r], bias = run.b ? run.b[f] : 0.0f;
      const auto d_h = [&](int64_t i) {  // dL/dh of the filter's noise patch of example i
        return g[i] * a * Slope<Q>(noise_std * (p0[i] - y[i]) + bias, power);
      };
      float d_bias = 0.0f;
      if (run.b) {
        for (int64_t i = 0; i < n; ++i) {
          const float d = d_h(i);
          d_bias += d;
          coef[i] += learning_rate * (noise_std * d);
        }
      } else {  // no sum over the examples: it was most of the head, its adds one chain
        for (int64_t i = 0; i < n; ++i) coef[i] += learning_rate * (noise_std * d_h(i));
      }
      const float c = (p0[n] - y[n]) / root_s;
      float d_c = 0.0f;
      for (int l = 0; l < 2; ++l) {
        const float scale = signal_norm * kCleanLabels[l];
        const float d_h = by_label[l] * a * Slope<Q>(c * scale + bias, power);
        d_c += d_h * scale;
        d_bias += d_h;
      }
      coef[n] += learning_rate * d_c / root_s;
      if (run.b) run.b[f] -= learning_rate * d_bias;
    }
  }
}

template <int Q>
void RunHeadsBaseline(const RunHead* runs, int64_t count, int64_t m, int64_t n, float power,
                      float root_s, float* scratch) {
  for (int64_t k = 0; k < count; ++k) RunHeadStep<Q>(runs[k], m, n, power, root_s, scratch);
}

#if defined(__x86_64__)
template <int Q>
JAXPRUNE_AVX512 void RunHeadsAvx512(const RunHead* runs, int64_t count, int64_t m, int64_t n,
                                    float power, float root_s, float* scratch) {
  for (int64_t k = 0; k < count; ++k) RunHeadStep<Q>(runs[k], m, n, power, root_s, scratch);
}

template <int Q>
JAXPRUNE_AVX2 void RunHeadsAvx2(const RunHead* runs, int64_t count, int64_t m, int64_t n,
                                float power, float root_s, float* scratch) {
  for (int64_t k = 0; k < count; ++k) RunHeadStep<Q>(runs[k], m, n, power, root_s, scratch);
}
#endif

using RunHeads = void (*)(const RunHead*, int64_t, int64_t, int64_t, float, float, float*);

// The heads for this CPU and activation power: max(h, 0)^q by products for q = 1, 2, 3.
template <int Q>
RunHeads RunHeadsOf() {
#if defined(__x86_64__)
  if (HasAvx512()) return RunHeadsAvx512<Q>;
  if (__builtin_cpu_supports("avx2")) return RunHeadsAvx2<Q>;
#endif
  return RunHeadsBaseline<Q>;
}

RunHeads RunHeadsFor(float power) {
  if (power == 1.0f) return RunHeadsOf<1>();
  if (power == 2.0f) return RunHeadsOf<2>();
  if (power == 3.0f) return RunHeadsOf<3>();
  return RunHeadsOf<0>();
}

// What the loss head of a segment call (kernel_steps, direct_steps) reads besides the
// projections, and the biases and diverged flags it updates in place (b: zeros without biases).
struct SegmentHead {
  const float *constants, *labels, *weights, *clean, *filter_weight;
  float* b;
  uint8_t* diverged;
  int64_t runs, groups, m, n;
  bool bias;

  // Whether the sizes are those of `runs` = S G runs of 2 m filters and n examples.
  bool Consistent(int64_t filters, int64_t b_count) const {
    return runs * 2 * m == filters && b_count == filters;
  }

  // The head of `run`: its 2 m filters' projections P' = proj0 - y and increments `coef`,
  // rows n + 1 apart.
  RunHead Of(int64_t run, const float* proj0, const float* y, float* coef) const {
    const int64_t f = 2 * m * run;
    return {proj0, y, coef, bias ? b + f : nullptr, diverged + run, constants + 3 * run,
            labels + n * run, weights + n * run, clean + n * (run / (runs / groups)),
            filter_weight + m * run};
  }
};

// The SegmentHead of a call's buffers, or an error naming `call` where their sizes disagree;
// copies b and the flags to the outputs where XLA did not alias them (it does).
ffi::ErrorOr<SegmentHead> HeadOf(const char* call, int64_t groups, int64_t n, int64_t filters,
                                 ffi::Buffer<ffi::F32> b_in, ffi::Buffer<ffi::PRED> diverged_in,
                                 ffi::Buffer<ffi::F32> constants, ffi::Buffer<ffi::F32> labels,
                                 ffi::Buffer<ffi::F32> weights, ffi::Buffer<ffi::F32> clean,
                                 ffi::Buffer<ffi::F32> filter_weight,
                                 ffi::ResultBuffer<ffi::F32>& b_out,
                                 ffi::ResultBuffer<ffi::PRED>& diverged_out, int64_t bias) {
  const int64_t runs = constants.element_count() / 3, m = filter_weight.dimensions().back();
  SegmentHead head{constants.typed_data(), labels.typed_data(), weights.typed_data(),
                   clean.typed_data(), filter_weight.typed_data(), b_out->typed_data(),
                   reinterpret_cast<uint8_t*>(diverged_out->typed_data()), runs, groups, m, n,
                   bias != 0};
  if (!head.Consistent(filters, b_in.element_count()) || labels.element_count() != runs * n ||
      weights.element_count() != runs * n || filter_weight.element_count() != runs * m ||
      clean.element_count() != groups * n || runs % groups != 0) {
    return ffi::Unexpected<ffi::Error>(ffi::Error(
        ffi::ErrorCode::kInvalidArgument,
        std::string("jaxprune: ") + call + " got inconsistent shapes"));
  }
  if (head.b != b_in.typed_data()) std::copy_n(b_in.typed_data(), filters, head.b);
  if (diverged_out->typed_data() != diverged_in.typed_data()) {
    std::copy_n(diverged_in.typed_data(), runs, diverged_out->typed_data());
  }
  return head;
}

// What a segment call forms with one group's noise Z (n, d) for `rows` rows C of W (d apart):
// P' = [C Z^T, <C, 1_S>] (ProjectRows from Z packed, or sgemm), and the update
// C <- where(M, C - Dn Z - [k < s] ds, 0) from delta = [Dn, ds] (UpdateRowsAvx2 from Z packed,
// or sgemm with beta = 1 and then MaskRow). Each thread packs a group's Z once per call: where
// runs share a group, its runs after the first find it packed.
class SegmentProducts {
 public:
  SegmentProducts(int64_t n, int64_t d, int64_t rows, int64_t support)
      : n_(n), d_(d), support_(support),
        own_(OwnKernelRuns() && OwnPays(n) && rows >= kOwnMinBlockRows),
        own_update_(OwnKernelRuns() && !HasAvx512()), mask_row_(MaskRowFor()), call_(++calls_) {}

  // proj (rows, n + 1), rows `stride` apart.
  void Project(const float* z, const float* c, int64_t rows, float* proj, int64_t stride) const {
    if (own_) {
      const Packed& packed = PackedFor(z);
      ProjectRows(c, rows, z, packed.zt.data(), packed.zeros.data(), proj, n_, d_, stride);
    } else {
      sgemm(kRowMajor, kNoTrans, kTrans, rows, n_, d_, 1.0f, c, d_, z, d_, 0.0f, proj, stride);
    }
    for (int64_t f = 0; f < rows; ++f) {
      proj[f * stride + n_] = std::accumulate(c + f * d_, c + f * d_ + support_, 0.0f);
    }
  }

  // delta (rows, n + 1), rows `stride` apart.
  void Update(const float* z, float* c, const uint8_t* keep, int64_t rows, const float* delta,
              int64_t stride) const {
    if (own_update_) {
      UpdateRowsAvx2(c, keep, rows, delta, stride, PackedFor(z).zp.data(), n_, d_, support_);
      return;
    }
    sgemm(kRowMajor, kNoTrans, kNoTrans, rows, d_, n_, -1.0f, delta, stride, z, d_, 1.0f, c, d_);
    for (int64_t f = 0; f < rows; ++f) {
      mask_row_(c + f * d_, keep + f * d_, delta[f * stride + n_], support_, d_);
    }
  }

 private:
  // A thread's packed copies of the Z it last packed, and the call it packed it in.
  struct Packed {
    uint64_t call = 0;
    const float* z = nullptr;
    std::vector<float> zt, zp, zeros;
  };

  const Packed& PackedFor(const float* z) const {
    thread_local Packed packed;
    if (packed.call == call_ && packed.z == z) return packed;
    packed.call = call_;
    packed.z = z;
    if (own_) {
      packed.zt.resize(PackedWidth(n_) * d_);
      packed.zeros.assign(d_, 0.0f);
      PackNoise(z, n_, d_, packed.zt.data());
    }
    if (own_update_) {
      packed.zp.resize((d_ + 15) / 16 * 16 * n_);
      PackNoiseColumns(z, n_, d_, packed.zp.data());
    }
    return packed;
  }

  int64_t n_, d_, support_;
  bool own_, own_update_;
  MaskRowKernel mask_row_;
  uint64_t call_;  // this call's number: a Z at an address packed in an earlier call is stale
  static inline std::atomic<uint64_t> calls_{0};
};

// The shapes of a segment call: S groups of Z (n, d), and W and M of S F rows of d floats.
struct SegmentShape {
  int64_t groups, n, d, filters;
};

ffi::ErrorOr<SegmentShape> ShapeOf(const char* call, ffi::Buffer<ffi::F32> w,
                                   ffi::Buffer<ffi::F32> noise, ffi::Buffer<ffi::PRED> mask) {
  if (auto error = CheckBlas(); error.failure()) return ffi::Unexpected<ffi::Error>(error);
  const auto z_dims = noise.dimensions();
  if (z_dims.size() != 3 || z_dims[2] == 0 || w.element_count() % z_dims[2] != 0 ||
      mask.element_count() != w.element_count()) {
    return ffi::Unexpected<ffi::Error>(ffi::Error(
        ffi::ErrorCode::kInvalidArgument,
        std::string("jaxprune: ") + call + " got inconsistent shapes"));
  }
  return SegmentShape{z_dims[0], z_dims[1], z_dims[2], w.element_count() / z_dims[2]};
}

// The kernel formulation's segment: each thread takes a block of the fewest runs that hold
// whole sets of interleaved filters through all the steps, while their Gram matrices stay in
// the core's caches from step to step: at the quick sweep's sizes 2 runs (160 KB) ran 1.02x
// as fast as blocks of 1 MiB and 1.06x as fast as 4 MiB; at the paper's 4 runs of 16 lanes
// (8 MB, both threads' in the L3 cache; 2 runs of 8 lanes with AVX2) 1.9x as fast as 8 runs
// (benchmarks/RESULTS.md). A block starts with its runs' P0' = [W Z^T, <W, 1_S>] and C = 0,
// and ends with W <- where(M, W - C Z', 0): no buffer of the segment is as large as the
// chunk's P0' (with them as XLA's temporaries, fresh memory every call, the segment took
// 300-1,200 page faults a step at R >= 1024).
ffi::Error KernelSteps(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> w_in,
                       ffi::Buffer<ffi::F32> noise, ffi::Buffer<ffi::PRED> mask,
                       ffi::Buffer<ffi::F32> b_in, ffi::Buffer<ffi::PRED> diverged_in,
                       ffi::Buffer<ffi::F32> constants, ffi::Buffer<ffi::F32> labels,
                       ffi::Buffer<ffi::F32> weights, ffi::Buffer<ffi::F32> clean,
                       ffi::Buffer<ffi::F32> filter_weight, ffi::Buffer<ffi::F32> upper,
                       ffi::Buffer<ffi::S32> num_steps, ffi::ResultBuffer<ffi::F32> w_out,
                       ffi::ResultBuffer<ffi::F32> b_out, ffi::ResultBuffer<ffi::PRED> diverged_out,
                       float power, int64_t support, int64_t bias) {
  const auto shape = ShapeOf("kernel_steps", w_in, noise, mask);
  if (shape.has_error()) return shape.error();
  const auto [groups, n, d, filters] = *shape;
  const int64_t stride = n + 1, packed = stride * (stride + 1) / 2;
  const auto upper_dims = upper.dimensions();
  const int64_t lanes = upper_dims.size() == 4 ? upper_dims[3] : 0;
  const SymmetricKernel kernel = SymmetricFor(lanes);
  if (kernel == nullptr || upper.element_count() != filters * packed) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "jaxprune: kernel_steps got inconsistent shapes");
  }
  const auto head = HeadOf("kernel_steps", groups, n, filters, b_in, diverged_in, constants,
                           labels, weights, clean, filter_weight, b_out, diverged_out, bias);
  if (head.has_error()) return head.error();
  const int64_t runs = head->runs, rows = 2 * head->m;
  float* w = w_out->typed_data();
  // XLA honours the aliases; copies keep the call correct if it ever did not.
  if (w != w_in.typed_data()) std::copy_n(w_in.typed_data(), filters * d, w);
  const int64_t steps = *num_steps.typed_data();
  const RunHeads heads = RunHeadsFor(power);
  const float root_s = std::sqrt(static_cast<float>(support));
  const SegmentProducts products(n, d, rows, support);
  const auto* keep = reinterpret_cast<const uint8_t*>(mask.typed_data());
  const int64_t block = lanes / std::gcd(rows, lanes);
  ParallelFor(pool, (runs + block - 1) / block, [&](int64_t i) {
    const int64_t first = i * block, count = std::min(block, runs - first);
    const int64_t sets = rows * count / lanes, size = rows * count * stride;
    thread_local std::vector<float> proj0, coef, y, scratch;
    thread_local std::vector<RunHead> heads_in;
    proj0.resize(size);
    coef.assign(size, 0.0f);
    y.resize(size);
    scratch.resize(2 * stride * lanes + 3 * n);
    heads_in.resize(count);
    const auto noise_of = [&](int64_t run) {
      return noise.typed_data() + run / (runs / groups) * n * d;
    };
    for (int64_t k = 0; k < count; ++k) {
      const int64_t run = first + k, at = rows * k * stride;
      products.Project(noise_of(run), w + rows * run * d, rows, proj0.data() + at, stride);
      heads_in[k] = head->Of(run, proj0.data() + at, y.data() + at, coef.data() + at);
    }
    for (int64_t t = 0; t < steps; ++t) {
      for (int64_t set = 0; set < sets; ++set) {
        const int64_t at = set * lanes * stride;
        kernel(upper.typed_data() + (rows * first + set * lanes) * packed, coef.data() + at,
               y.data() + at, stride, scratch.data(), scratch.data() + stride * lanes);
      }
      heads(heads_in.data(), count, head->m, n, power, root_s, scratch.data());
    }
    for (int64_t k = 0; k < count; ++k) {
      const int64_t run = first + k;
      products.Update(noise_of(run), w + rows * run * d, keep + rows * run * d, rows,
                      coef.data() + rows * k * stride, stride);
    }
  });
  return ffi::Error::Success();
}

// The direct formulation's segment of GD: each thread takes one run at a time through all
// `num_steps` steps while its weights, mask and noise stay near the core: P' = [W Z^T, <W, 1_S>],
// the loss head (RunHeadStep, whose coefficient increments [Dn, ds] are the direct step's
// factors), then W <- where(M, W - Dn Z - [k < s] ds, 0) (SegmentProducts). W and M come in
// any shape of S F rows of d floats: the state's own spares XLA two copies of W a call.
ffi::Error DirectSteps(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> w_in,
                       ffi::Buffer<ffi::F32> noise, ffi::Buffer<ffi::PRED> mask,
                       ffi::Buffer<ffi::F32> b_in, ffi::Buffer<ffi::PRED> diverged_in,
                       ffi::Buffer<ffi::F32> constants, ffi::Buffer<ffi::F32> labels,
                       ffi::Buffer<ffi::F32> weights, ffi::Buffer<ffi::F32> clean,
                       ffi::Buffer<ffi::F32> filter_weight, ffi::Buffer<ffi::S32> num_steps,
                       ffi::ResultBuffer<ffi::F32> w_out, ffi::ResultBuffer<ffi::F32> b_out,
                       ffi::ResultBuffer<ffi::PRED> diverged_out, float power, int64_t support,
                       int64_t bias) {
  const auto shape = ShapeOf("direct_steps", w_in, noise, mask);
  if (shape.has_error()) return shape.error();
  const auto [groups, n, d, filters] = *shape;
  const int64_t stride = n + 1;
  const auto head = HeadOf("direct_steps", groups, n, filters, b_in, diverged_in, constants,
                           labels, weights, clean, filter_weight, b_out, diverged_out, bias);
  if (head.has_error()) return head.error();
  const int64_t runs = head->runs, m = head->m, rows = 2 * m;
  float* w = w_out->typed_data();
  // XLA honours the aliases; copies keep the call correct if it ever did not.
  if (w != w_in.typed_data()) std::copy_n(w_in.typed_data(), filters * d, w);
  const int64_t steps = *num_steps.typed_data();
  const RunHeads heads = RunHeadsFor(power);
  const float root_s = std::sqrt(static_cast<float>(support));
  const SegmentProducts products(n, d, rows, support);
  const auto* keep_all = reinterpret_cast<const uint8_t*>(mask.typed_data());
  ParallelFor(pool, runs, [&](int64_t run) {
    const float* z = noise.typed_data() + run / (runs / groups) * n * d;
    float* c = w + rows * run * d;
    const uint8_t* keep = keep_all + rows * run * d;
    thread_local std::vector<float> proj, delta, y, scratch;
    proj.resize(rows * stride);
    delta.resize(rows * stride);
    y.assign(rows * stride, 0.0f);
    scratch.resize(3 * n);
    const RunHead run_head = head->Of(run, proj.data(), y.data(), delta.data());
    products.Project(z, c, rows, proj.data(), stride);
    for (int64_t t = 0; t < steps; ++t) {
      std::fill(delta.begin(), delta.end(), 0.0f);
      heads(&run_head, 1, m, n, power, root_s, scratch.data());
      products.Update(z, c, keep, rows, delta.data(), stride);
      if (t + 1 < steps) products.Project(z, c, rows, proj.data(), stride);
    }
  });
  return ffi::Error::Success();
}

// Threefry-2x32 with 20 rounds (Salmon et al. 2011), as JAX's threefry2x32 primitive computes
// it: (y1, y2) = the hash of the counters (x1, x2) under the key (k1, k2), elementwise.
inline void Threefry(uint32_t k1, uint32_t k2, uint32_t& x1, uint32_t& x2) {
  static constexpr uint32_t kRotations[2][4] = {{13, 15, 26, 6}, {17, 29, 16, 24}};
  const uint32_t ks[3] = {k1, k2, k1 ^ k2 ^ 0x1BD11BDAu};
  uint32_t a = x1 + ks[0], b = x2 + ks[1];
  for (uint32_t i = 0; i < 5; ++i) {
    for (const uint32_t r : kRotations[i % 2]) {
      a += b;
      b = (b << r) | (b >> (32 - r));
      b ^= a;
    }
    a += ks[(i + 1) % 3];
    b += ks[(i + 2) % 3] + i + 1;
  }
  x1 = a;
  x2 = b;
}

// Inlined into each build below, so that each vectorizes it for its own instructions.
__attribute__((always_inline)) inline void ThreefryBody(
    const uint32_t* __restrict__ k1, const uint32_t* __restrict__ k2,
    const uint32_t* __restrict__ x1, const uint32_t* __restrict__ x2, uint32_t* __restrict__ y1,
    uint32_t* __restrict__ y2, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    uint32_t a = x1[i], b = x2[i];
    Threefry(k1[i], k2[i], a, b);
    y1[i] = a;
    y2[i] = b;
  }
}

void ThreefryBlock(const uint32_t* k1, const uint32_t* k2, const uint32_t* x1,
                   const uint32_t* x2, uint32_t* y1, uint32_t* y2, int64_t count) {
  ThreefryBody(k1, k2, x1, x2, y1, y2, count);
}

#if defined(__x86_64__)
JAXPRUNE_AVX512 void ThreefryBlockAvx512(const uint32_t* k1, const uint32_t* k2,
                                         const uint32_t* x1, const uint32_t* x2, uint32_t* y1,
                                         uint32_t* y2, int64_t count) {
  ThreefryBody(k1, k2, x1, x2, y1, y2, count);
}
#endif

// JAX's threefry2x32 primitive on the CPU (cpu_update.py registers it as its lowering there):
// its four operands broadcast to the outputs' shape, as JAX's GPU kernel takes them.
ffi::Error Threefry2x32(ffi::ThreadPool pool, ffi::Buffer<ffi::U32> k1,
                        ffi::Buffer<ffi::U32> k2, ffi::Buffer<ffi::U32> x1,
                        ffi::Buffer<ffi::U32> x2, ffi::ResultBuffer<ffi::U32> y1,
                        ffi::ResultBuffer<ffi::U32> y2) {
  const int64_t count = x1.element_count();
  if (k1.element_count() != count || k2.element_count() != count ||
      x2.element_count() != count) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "jaxprune: threefry2x32's keys and counters differ in size");
  }
  auto block = ThreefryBlock;
#if defined(__x86_64__)
  if (HasAvx512()) block = ThreefryBlockAvx512;
#endif
  constexpr int64_t kBlock = 1 << 16;
  ParallelFor(pool, (count + kBlock - 1) / kBlock, [&](int64_t i) {
    const int64_t first = i * kBlock, size = std::min(kBlock, count - first);
    block(k1.typed_data() + first, k2.typed_data() + first, x1.typed_data() + first,
          x2.typed_data() + first, y1->typed_data() + first, y2->typed_data() + first, size);
  });
  return ffi::Error::Success();
}

}  // namespace

// Whether ProjectRows runs on this CPU (AVX-512, or AVX2 with FMA).
extern "C" int jaxprune_own_projection() { return OwnKernelRuns(); }

// Which of the kernels' builds run here: 512 (AVX-512), 256 (AVX2 and FMA) or 0 (baseline).
extern "C" int jaxprune_builds() { return HasAvx512() ? 512 : OwnKernelRuns() ? 256 : 0; }

// The most lanes symmetric_products reads at once on this CPU.
extern "C" int jaxprune_vector_lanes() { return static_cast<int>(VectorLanes()); }

// The own kernel on the calling thread, for benchmarks/thin_products.py: zt
// (jaxprune_packed_width(n) x d floats) = Z packed, then p (count, n) = c (count, d) Z^T;
// zeros: d zeros.
extern "C" int64_t jaxprune_packed_width(int64_t n) { return PackedWidth(n); }
extern "C" void jaxprune_pack_noise(const float* z, int64_t n, int64_t d, float* zt) {
  PackNoise(z, n, d, zt);
}
extern "C" void jaxprune_project_rows(const float* c, int64_t count, const float* z,
                                      const float* zt, const float* zeros, float* p, int64_t n,
                                      int64_t d) {
  ProjectRows(c, count, z, zt, zeros, p, n, d, n);
}

extern "C" void jaxprune_set_blas(void* sgemm_fn, void* set_threads_fn, void* get_threads_fn) {
  sgemm = reinterpret_cast<Sgemm>(sgemm_fn);
  set_blas_threads = reinterpret_cast<void (*)(int)>(set_threads_fn);
  get_blas_threads = reinterpret_cast<int (*)()>(get_threads_fn);
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxprune_projections, Projections,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // W
                                  .Arg<ffi::Buffer<ffi::F32>>()   // Z
                                  .Arg<ffi::Buffer<ffi::S32>>()   // first group: a scalar
                                  .Ret<ffi::Buffer<ffi::F32>>()   // W Z^T
                                  .Attr<int64_t>("block_bytes")
                                  .Attr<int64_t>("projection")
                                  .Attr<int64_t>("column_bytes"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxprune_symmetric_products, SymmetricProducts,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // K: upper triangles
                                  .Arg<ffi::Buffer<ffi::F32>>()   // A
                                  .Ret<ffi::Buffer<ffi::F32>>()); // K A

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxprune_kernel_steps, KernelSteps,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // W
                                  .Arg<ffi::Buffer<ffi::F32>>()   // Z
                                  .Arg<ffi::Buffer<ffi::PRED>>()  // M
                                  .Arg<ffi::Buffer<ffi::F32>>()   // b
                                  .Arg<ffi::Buffer<ffi::PRED>>()  // diverged
                                  .Arg<ffi::Buffer<ffi::F32>>()   // noise_std, |mu|, lr
                                  .Arg<ffi::Buffer<ffi::F32>>()   // observed labels
                                  .Arg<ffi::Buffer<ffi::F32>>()   // example weights
                                  .Arg<ffi::Buffer<ffi::F32>>()   // clean labels
                                  .Arg<ffi::Buffer<ffi::F32>>()   // filter weights
                                  .Arg<ffi::Buffer<ffi::F32>>()   // K': upper triangles
                                  .Arg<ffi::Buffer<ffi::S32>>()   // steps: a scalar
                                  .Ret<ffi::Buffer<ffi::F32>>()   // new W (aliases W)
                                  .Ret<ffi::Buffer<ffi::F32>>()   // new b (aliases b)
                                  .Ret<ffi::Buffer<ffi::PRED>>()  // new diverged (aliases it)
                                  .Attr<float>("power")
                                  .Attr<int64_t>("support")
                                  .Attr<int64_t>("bias"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxprune_threefry2x32, Threefry2x32,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::U32>>()   // k1
                                  .Arg<ffi::Buffer<ffi::U32>>()   // k2
                                  .Arg<ffi::Buffer<ffi::U32>>()   // x1
                                  .Arg<ffi::Buffer<ffi::U32>>()   // x2
                                  .Ret<ffi::Buffer<ffi::U32>>()   // y1
                                  .Ret<ffi::Buffer<ffi::U32>>()); // y2

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxprune_direct_steps, DirectSteps,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // W
                                  .Arg<ffi::Buffer<ffi::F32>>()   // Z
                                  .Arg<ffi::Buffer<ffi::PRED>>()  // M
                                  .Arg<ffi::Buffer<ffi::F32>>()   // b
                                  .Arg<ffi::Buffer<ffi::PRED>>()  // diverged
                                  .Arg<ffi::Buffer<ffi::F32>>()   // noise_std, |mu|, lr
                                  .Arg<ffi::Buffer<ffi::F32>>()   // observed labels
                                  .Arg<ffi::Buffer<ffi::F32>>()   // example weights
                                  .Arg<ffi::Buffer<ffi::F32>>()   // clean labels
                                  .Arg<ffi::Buffer<ffi::F32>>()   // filter weights
                                  .Arg<ffi::Buffer<ffi::S32>>()   // steps: a scalar
                                  .Ret<ffi::Buffer<ffi::F32>>()   // new W (aliases W)
                                  .Ret<ffi::Buffer<ffi::F32>>()   // new b (aliases b)
                                  .Ret<ffi::Buffer<ffi::PRED>>()  // new diverged (aliases it)
                                  .Attr<float>("power")
                                  .Attr<int64_t>("support")
                                  .Attr<int64_t>("bias"));
