// OpenBLAS's sgemm (numpy's wheel) against kernels.cc on the direct step's two products, n = 100.
//
//     g++ -std=c++20 -O3 -fno-strict-aliasing harness.cc kernels.cc -ldl -lpthread -o harness
//     LIB=$(ls .venv/lib/python3.11/site-packages/numpy.libs/libscipy_openblas64_*.so)
//     ./harness $LIB products 25600 1000 128 2   # ROWS D BLK THREADS
//     ./harness $LIB step 256 1000 1 128         # RUNS D SEEDS BLK (2 threads)
//
// products: each product alone, streaming over a W of ROWS x D in blocks of BLK rows; best of
// 15 in alternation. step: both products in the new call's order (per block: update and mask,
// then the block's P) against two passes (all P, then all updates), with OpenBLAS for both,
// with kernels.cc's forward product, and with kernels.cc for both; best of 9. RUNS runs of
// 2m = 100 rows; SEEDS 1: one Z per run (blocks of 100 rows), 0: one shared Z.
#include <dlfcn.h>

#include <algorithm>
#include <barrier>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <thread>
#include <vector>

extern "C" void proj_block(const float* w, const float* z, float* p, int64_t rows, int64_t n,
                           int64_t d);
extern "C" void update_block(float* c, const float* a, const float* z, const uint8_t* keep,
                             const float* shift, int64_t rows, int64_t n, int64_t d,
                             int64_t support, int64_t chunk, int64_t prefetch);
using Sgemm = void (*)(int, int, int, int64_t, int64_t, int64_t, float, const float*, int64_t,
                       const float*, int64_t, float, float*, int64_t);
Sgemm sgemm;
int (*set_threads_local)(int);

constexpr int64_t kN = 100, kSupport = 10, kRunRows = 100, kChunk = 48;

// The step's products on W (rows x d), with one Z for every kRunRows rows or one for all.
struct Problem {
  int64_t rows, d;
  bool z_per_run;
  std::vector<float> W, A, Z, P, S;
  std::vector<uint8_t> K;
  std::vector<std::pair<int64_t, int64_t>> blocks;  // (first row, rows)

  Problem(int64_t rows, int64_t d, bool z_per_run, int64_t blk)
      : rows(rows), d(d), z_per_run(z_per_run), W(rows * d), A(rows * kN),
        Z((z_per_run ? rows / kRunRows : 1) * kN * d), P(rows * kN), S(rows, 0.0f), K(rows * d) {
    std::mt19937 g(0);
    std::normal_distribution<float> normal;
    for (auto& x : W) x = normal(g);
    for (auto& x : A) x = 1e-4f * normal(g);
    for (auto& x : Z) x = normal(g);
    for (auto& x : K) x = (g() % 10) < 7;
    for (int64_t i = 0; i < rows; i += blk) blocks.push_back({i, std::min(blk, rows - i)});
  }
  const float* z(int64_t i) const { return Z.data() + (z_per_run ? i / kRunRows * kN * d : 0); }
  float* w(int64_t i) { return W.data() + i * d; }

  void Project(int64_t i, int64_t c) {
    sgemm(101, 111, 112, c, kN, d, 1.0f, w(i), d, z(i), d, 0.0f, P.data() + i * kN, kN);
  }
  void ProjectAvx2(int64_t i, int64_t c) { proj_block(w(i), z(i), P.data() + i * kN, c, kN, d); }
  void Update(int64_t i, int64_t c) {  // as cpu_update.cc: sgemm, then the shift and the mask
    sgemm(101, 111, 111, c, d, kN, -1.0f, A.data() + i * kN, kN, z(i), d, 1.0f, w(i), d);
    for (int64_t j = 0; j < c; ++j) {
      float* row = w(i + j);
      for (int64_t k = 0; k < kSupport; ++k) row[k] -= S[i + j];
      uint32_t* bits = reinterpret_cast<uint32_t*>(row);
      for (int64_t k = 0; k < d; ++k) bits[k] &= 0u - static_cast<uint32_t>(K[(i + j) * d + k]);
    }
  }
  void UpdateAvx2(int64_t i, int64_t c) {
    update_block(w(i), A.data() + i * kN, z(i), K.data() + i * d, S.data() + i, c, kN, d,
                 kSupport, kChunk, 1);
  }
};

// Seconds of body(thread) on `threads` threads, each with a one-thread sgemm.
double Seconds(int threads, const std::function<void(int)>& body) {
  auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> helpers;
  auto work = [&](int t) { set_threads_local(1); body(t); };
  for (int t = 1; t < threads; ++t) helpers.emplace_back(work, t);
  work(0);
  for (auto& h : helpers) h.join();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Best GFLOP/s of each way over `repeats` rounds in alternation.
std::vector<double> Best(const std::vector<std::function<double()>>& ways, int repeats,
                         double flop) {
  std::vector<double> best(ways.size(), 1e30);
  for (int r = 0; r < repeats; ++r)
    for (size_t m = 0; m < ways.size(); ++m) best[m] = std::min(best[m], ways[m]());
  for (auto& b : best) b = flop / b / 1e9;
  return best;
}

int main(int argc, char** argv) {
  if (argc != 7) {
    fprintf(stderr, "usage: %s LIB products ROWS D BLK THREADS | LIB step RUNS D SEEDS BLK\n",
            argv[0]);
    return 2;
  }
  void* lib = dlopen(argv[1], RTLD_NOW);
  sgemm = reinterpret_cast<Sgemm>(dlsym(lib, "scipy_cblas_sgemm64_"));
  set_threads_local = reinterpret_cast<int (*)(int)>(dlsym(lib, "openblas_set_num_threads_local"));
  const int64_t a = atol(argv[3]), d = atol(argv[4]), b = atol(argv[5]), c = atol(argv[6]);
  if (strcmp(argv[2], "products") == 0) {
    Problem p(a, d, false, b);
    const int threads = static_cast<int>(c);
    auto each = [&](void (Problem::*product)(int64_t, int64_t)) {
      return [&, product] {
        return Seconds(threads, [&](int t) {
          for (size_t k = t; k < p.blocks.size(); k += threads)
            (p.*product)(p.blocks[k].first, p.blocks[k].second);
        });
      };
    };
    auto g = Best({each(&Problem::Project), each(&Problem::ProjectAvx2), each(&Problem::Update),
                   each(&Problem::UpdateAvx2)}, 15, 2.0 * a * kN * d);
    printf("rows=%ld d=%ld blk=%ld threads=%d: forward sgemm %.1f avx2 %.1f | update + mask "
           "sgemm %.1f avx2 %.1f GFLOP/s\n", a, d, b, threads, g[0], g[1], g[2], g[3]);
  } else {
    Problem p(a * kRunRows, d, b != 0, b != 0 ? kRunRows : c);
    const int threads = 2;
    auto fused = [&](void (Problem::*update)(int64_t, int64_t),
                     void (Problem::*project)(int64_t, int64_t)) {
      return [&, update, project] {
        return Seconds(threads, [&](int t) {
          for (size_t k = t; k < p.blocks.size(); k += threads) {
            (p.*update)(p.blocks[k].first, p.blocks[k].second);
            (p.*project)(p.blocks[k].first, p.blocks[k].second);
          }
        });
      };
    };
    auto two_passes = [&] {
      std::barrier between(threads);
      return Seconds(threads, [&](int t) {
        for (size_t k = t; k < p.blocks.size(); k += threads)
          p.Project(p.blocks[k].first, p.blocks[k].second);
        between.arrive_and_wait();
        for (size_t k = t; k < p.blocks.size(); k += threads)
          p.Update(p.blocks[k].first, p.blocks[k].second);
      });
    };
    auto g = Best({two_passes, fused(&Problem::Update, &Problem::Project),
                   fused(&Problem::Update, &Problem::ProjectAvx2),
                   fused(&Problem::UpdateAvx2, &Problem::ProjectAvx2)}, 9,
                  4.0 * p.rows * kN * d);
    printf("runs=%ld d=%ld %s: two passes %.1f, per block: sgemm %.1f, avx2 forward %.1f, avx2 "
           "both %.1f GFLOP/s\n", a, d, b ? "seeds" : "shared", g[0], g[1], g[2], g[3]);
  }
}
