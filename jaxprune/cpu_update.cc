// The matrix products of plain GD as XLA:CPU custom calls (see cpu_update.py):
//
//     P = W Z^T                                    W, M: (S, F, d)  Z: (S, n, d)
//     W <- where(M, W - Dn Z - [k < s] ds, 0)      Dn, P: (S, F, n)  ds: (S, F, 1)
//     Y_f = K_f A_f                                K_f: symmetric n x n, upper triangles
//
// jaxprune_update_project does the update and then, while the block's rows of W are still in
// cache, the next step's P of those rows. The update is an sgemm with beta = 1 into W itself
// (W and P are updated in place), in blocks of rows of about `block_bytes`, small enough to
// stay in cache while the support shift, the mask and the projections follow (cpu_update.py
// picks twice one core's L2 cache). The blocks run on XLA's intra-op threads. sgemm is an ILP64
// cblas_sgemm found at run time (numpy's OpenBLAS) and handed over by jaxprune_set_blas
// before the first call.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using Sgemm = void (*)(int order, int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                       float alpha, const float* a, int64_t lda, const float* b, int64_t ldb,
                       float beta, float* c, int64_t ldc);
// CBLAS_ORDER and CBLAS_TRANSPOSE values.
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

Sgemm sgemm = nullptr;
int (*set_threads_local)(int) = nullptr;  // openblas_set_num_threads_local

// One row of W after its product: subtract ds on the signal support, then zero the pruned
// entries. The mask is applied to the float's bits (AND with 0 or ~0): a select on a bool
// does not vectorize with GCC 12 and ran 17x slower on random masks.
void MaskRow(float* row, const uint8_t* keep, float shift, int64_t support, int64_t d) {
  for (int64_t k = 0; k < support; ++k) row[k] -= shift;
  uint32_t* bits = reinterpret_cast<uint32_t*>(row);  // built with -fno-strict-aliasing
  for (int64_t k = 0; k < d; ++k) bits[k] &= 0u - static_cast<uint32_t>(keep[k]);
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
      if (ran == 0) set_threads_local(1);
      run(i);
    }
    if (ran > 0 && done.fetch_add(ran) + ran == count) {
      std::lock_guard<std::mutex> lock(mutex);
      finished.notify_all();
    }
  }
};

// run(0), ..., run(count - 1) on the caller and XLA's intra-op threads; returns when all ran.
// OpenBLAS's thread count is one global (its openblas_set_num_threads_local sets the global
// count and returns the old one), so it is set and put back here, around all the blocks: a
// thread that put back what it had read could leave it at 1, the count another thread had
// set, and numpy's products on one thread for the rest of the process.
void ParallelFor(ffi::ThreadPool& pool, int64_t count, std::function<void(int64_t)> run) {
  const int previous = set_threads_local(1);
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
  set_threads_local(previous);  // after every block: each set 1 before running
}

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

// y_l = K_l a_l for L symmetric n x n matrices K_l given by their upper triangles, row by row
// (K[0, 0..n-1], K[1, 1..n-1], ...) with the L matrices' entries interleaved (entry e of K_l
// at upper[e * L + l]): each stored entry is read once and serves K[i, j] and K[j, i], so the
// product reads half the bytes of the full matrices (the kernel formulation's step reads
// nothing else from memory), and every operation is on L lanes at once, whatever the length
// of the triangle's row (one matrix at a time, along those short rows, the product ran
// 1.2-1.3x slower: ``benchmarks/RESULTS.md``).
// a, y: (L, n) as the filters' rows; at, yt: scratch of n * L floats, the same transposed.
template <int L>
void SymmetricLanes(const float* __restrict__ upper, const float* __restrict__ a,
                    float* __restrict__ y, int64_t n, float* __restrict__ at,
                    float* __restrict__ yt) {
  for (int64_t i = 0; i < n; ++i) {
    for (int l = 0; l < L; ++l) at[i * L + l] = a[l * n + i];
  }
  std::fill_n(yt, n * L, 0.0f);
  for (int64_t i = 0; i < n; ++i) {
    const float* row = upper - i * L;  // row[j * L + l] = K_l[i, j] for j >= i
    float a_i[L], dot[L];
    for (int l = 0; l < L; ++l) {
      a_i[l] = at[i * L + l];
      dot[l] = row[i * L + l] * a_i[l];
    }
    for (int64_t j = i + 1; j < n; ++j) {
      for (int l = 0; l < L; ++l) {
        yt[j * L + l] += row[j * L + l] * a_i[l];
        dot[l] += row[j * L + l] * at[j * L + l];
      }
    }
    for (int l = 0; l < L; ++l) yt[i * L + l] += dot[l];
    upper += (n - i) * L;
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int l = 0; l < L; ++l) y[l * n + i] = yt[i * L + l];
  }
}

using SymmetricKernel = void (*)(const float*, const float*, float*, int64_t, float*, float*);

// The kernel for L lanes, or nullptr for an L it is not built for.
SymmetricKernel SymmetricFor(int64_t lanes) {
  switch (lanes) {
    case 1: return SymmetricLanes<1>;
    case 2: return SymmetricLanes<2>;
    case 4: return SymmetricLanes<4>;
    case 8: return SymmetricLanes<8>;
    default: return nullptr;
  }
}

ffi::Error CheckReady(ffi::Span<const int64_t> dims) {
  if (sgemm == nullptr || set_threads_local == nullptr) {
    return ffi::Error(ffi::ErrorCode::kFailedPrecondition, "jaxprune: BLAS was not set");
  }
  if (dims.size() != 3) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "jaxprune: W must be (S, F, d)");
  }
  return ffi::Error::Success();
}

// out (S, F, n) = W (S, F, d) @ Z (S, n, d)^T
ffi::Error Projections(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> w,
                       ffi::Buffer<ffi::F32> noise, ffi::ResultBuffer<ffi::F32> out,
                       int64_t block_bytes) {
  const auto dims = w.dimensions();
  if (auto error = CheckReady(dims); error.failure()) return error;
  const int64_t groups = dims[0], rows = dims[1], d = dims[2];
  const int64_t n = noise.dimensions()[1];
  const float* a = w.typed_data();
  const float* z = noise.typed_data();
  float* p = out->typed_data();
  const RowBlocks blocks(rows, d * sizeof(float), block_bytes);
  ParallelFor(pool, groups * blocks.per_group, [=](int64_t i) {
    const auto [g, first, count] = blocks[i];
    if (count == 0) return;
    sgemm(kRowMajor, kNoTrans, kTrans, count, n, d, 1.0f, a + first * d, d, z + g * n * d, d,
          0.0f, p + first * n, n);
  });
  return ffi::Error::Success();
}

// w_out = where(M, W - Dn Z - [k < s] ds, 0), then p_out = w_out Z^T where `project` (else
// P unchanged); w_out aliases W and p_out aliases P.
ffi::Error UpdateProject(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> w,
                         ffi::Buffer<ffi::F32> proj, ffi::Buffer<ffi::F32> step_noise,
                         ffi::Buffer<ffi::F32> noise, ffi::Buffer<ffi::PRED> mask,
                         ffi::Buffer<ffi::F32> step_support, ffi::Buffer<ffi::PRED> project,
                         ffi::ResultBuffer<ffi::F32> w_out, ffi::ResultBuffer<ffi::F32> p_out,
                         int64_t support, int64_t block_bytes) {
  const auto dims = w.dimensions();
  if (auto error = CheckReady(dims); error.failure()) return error;
  const int64_t groups = dims[0], rows = dims[1], d = dims[2];
  const int64_t n = step_noise.dimensions()[2];
  float* c_all = w_out->typed_data();
  float* p = p_out->typed_data();
  // XLA honours the aliases; copies keep the call correct if it ever did not.
  if (c_all != w.typed_data()) std::copy_n(w.typed_data(), groups * rows * d, c_all);
  if (p != proj.typed_data()) std::copy_n(proj.typed_data(), groups * rows * n, p);
  const bool and_project = *project.typed_data();
  const float* a = step_noise.typed_data();
  const float* z = noise.typed_data();
  const auto* keep = reinterpret_cast<const uint8_t*>(mask.typed_data());
  const float* shift = step_support.typed_data();
  const RowBlocks blocks(rows, d * sizeof(float), block_bytes);
  ParallelFor(pool, groups * blocks.per_group, [=](int64_t i) {
    const auto [g, first, count] = blocks[i];
    if (count == 0) return;
    float* c = c_all + first * d;
    const float* zg = z + g * n * d;
    sgemm(kRowMajor, kNoTrans, kNoTrans, count, d, n, -1.0f, a + first * n, n, zg, d, 1.0f, c,
          d);
    for (int64_t j = 0; j < count; ++j) {
      MaskRow(c + j * d, keep + (first + j) * d, shift[first + j], support, d);
    }
    if (and_project) {
      sgemm(kRowMajor, kNoTrans, kTrans, count, n, d, 1.0f, c, d, zg, d, 0.0f, p + first * n, n);
    }
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
                      "jaxprune: K must be (S, F / L, n (n + 1) / 2, L), L = 1, 2, 4 or 8, "
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

}  // namespace

extern "C" void jaxprune_set_blas(void* sgemm_fn, void* set_threads_local_fn) {
  sgemm = reinterpret_cast<Sgemm>(sgemm_fn);
  set_threads_local = reinterpret_cast<int (*)(int)>(set_threads_local_fn);
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxprune_update_project, UpdateProject,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // W
                                  .Arg<ffi::Buffer<ffi::F32>>()   // P
                                  .Arg<ffi::Buffer<ffi::F32>>()   // Dn
                                  .Arg<ffi::Buffer<ffi::F32>>()   // Z
                                  .Arg<ffi::Buffer<ffi::PRED>>()  // M
                                  .Arg<ffi::Buffer<ffi::F32>>()   // ds
                                  .Arg<ffi::Buffer<ffi::PRED>>()  // project: a scalar
                                  .Ret<ffi::Buffer<ffi::F32>>()   // new W (aliases W)
                                  .Ret<ffi::Buffer<ffi::F32>>()   // new P (aliases P)
                                  .Attr<int64_t>("support")
                                  .Attr<int64_t>("block_bytes"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxprune_projections, Projections,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // W
                                  .Arg<ffi::Buffer<ffi::F32>>()   // Z
                                  .Ret<ffi::Buffer<ffi::F32>>()   // W Z^T
                                  .Attr<int64_t>("block_bytes"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxprune_symmetric_products, SymmetricProducts,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // K: upper triangles
                                  .Arg<ffi::Buffer<ffi::F32>>()   // A
                                  .Ret<ffi::Buffer<ffi::F32>>()); // K A
