// The two products of a step in the new call's order (per block: update and mask, then the
// block's P) against two passes (all P, then all updates), with OpenBLAS for both, with
// kernels.cc's forward product, and with kernels.cc for both; 2 threads, best of 9.
// RUNS runs of 2m = 100 rows, n = 100; SEEDS 1: one Z per run (blocks of 100 rows), 0: one
// shared Z (blocks of BLK rows).
//
//     g++ -std=c++20 -O3 -fno-strict-aliasing fused.cc kernels.cc -ldl -lpthread -o fused
//     ./fused .venv/lib/python3.11/site-packages/numpy.libs/libscipy_openblas64_*.so \
//         256 1000 0 128        # RUNS D SEEDS BLK
#include <dlfcn.h>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <thread>
#include <vector>
#include <random>
#include <algorithm>
#include <barrier>
extern "C" void proj_block(const float* w, const float* z, float* p, int64_t rows, int64_t n, int64_t d);
extern "C" void update_block(float* c, const float* a, const float* z, const uint8_t* keep, const float* shift, int64_t rows, int64_t n, int64_t d, int64_t support, int64_t chunk, int64_t prefetch);
using Sgemm = void (*)(int, int, int, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t, float, float*, int64_t);
Sgemm sgemm; int (*setlocal)(int);
void MaskRow(float* row, const uint8_t* keep, float shift, int64_t support, int64_t d) {
  for (int64_t k = 0; k < support; ++k) row[k] -= shift;
  uint32_t* bits = reinterpret_cast<uint32_t*>(row);
  for (int64_t k = 0; k < d; ++k) bits[k] &= 0u - static_cast<uint32_t>(keep[k]);
}
int main(int argc, char** argv) {
  int64_t runs = atol(argv[2]), d = atol(argv[3]), seeds = atol(argv[4]), nthreads = 2;
  const int64_t n = 100, support = 10, F = 100, rows = runs * F;
  void* h = dlopen(argv[1], RTLD_NOW);
  sgemm = (Sgemm)dlsym(h, "scipy_cblas_sgemm64_");
  setlocal = (int (*)(int))dlsym(h, "openblas_set_num_threads_local");
  std::mt19937 g(0); std::normal_distribution<float> nd;
  const int64_t nz = seeds ? runs : 1;
  std::vector<float> W(rows * d), A(rows * n), Z(nz * n * d), P(rows * n), S(rows, 0.0f);
  std::vector<uint8_t> K(rows * d);
  for (auto& x : W) x = nd(g); for (auto& x : A) x = 1e-4f * nd(g); for (auto& x : Z) x = nd(g);
  for (auto& x : K) x = (g() % 10) < 7;
  // blocks: seeds -> one per run (100 rows); shared -> 128 rows
  std::vector<std::pair<int64_t, int64_t>> blocks;
  const int64_t blk = seeds ? F : atol(argv[5]);
  for (int64_t i = 0; i < rows; i += blk) blocks.push_back({i, std::min(blk, rows - i)});
  auto zof = [&](int64_t i) { return Z.data() + (seeds ? (i / F) * n * d : 0); };
  auto proj = [&](int64_t i, int64_t c) { sgemm(101, 111, 112, c, n, d, 1.0f, W.data() + i * d, d, zof(i), d, 0.0f, P.data() + i * n, n); };
  auto upd = [&](int64_t i, int64_t c) {
    float* w = W.data() + i * d;
    sgemm(101, 111, 111, c, d, n, -1.0f, A.data() + i * n, n, zof(i), d, 1.0f, w, d);
    for (int64_t j = 0; j < c; ++j) MaskRow(w + j * d, K.data() + (i + j) * d, S[i + j], support, d);
  };
  auto proj2 = [&](int64_t i, int64_t c) { proj_block(W.data() + i * d, zof(i), P.data() + i * n, c, n, d); };
  auto upd2 = [&](int64_t i, int64_t c) { update_block(W.data() + i * d, A.data() + i * n, zof(i), K.data() + i * d, S.data() + i, c, n, d, support, 48, 1); };
  auto run = [&](int mode) {
    std::barrier bar(nthreads);
    auto worker = [&](int t) {
      setlocal(1);
      if (mode == 0) {
        for (size_t b = t; b < blocks.size(); b += nthreads) proj(blocks[b].first, blocks[b].second);
        bar.arrive_and_wait();
        for (size_t b = t; b < blocks.size(); b += nthreads) upd(blocks[b].first, blocks[b].second);
      } else if (mode == 1) {
        for (size_t b = t; b < blocks.size(); b += nthreads) { upd(blocks[b].first, blocks[b].second); proj(blocks[b].first, blocks[b].second); }
      } else if (mode == 2) {
        for (size_t b = t; b < blocks.size(); b += nthreads) { upd(blocks[b].first, blocks[b].second); proj2(blocks[b].first, blocks[b].second); }
      } else {
        for (size_t b = t; b < blocks.size(); b += nthreads) { upd2(blocks[b].first, blocks[b].second); proj2(blocks[b].first, blocks[b].second); }
      }
    };
    auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> ts;
    for (int t = 1; t < nthreads; ++t) ts.emplace_back(worker, t);
    worker(0);
    for (auto& t : ts) t.join();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  double best[4] = {1e9, 1e9, 1e9, 1e9};
  for (int rep = 0; rep < 9; ++rep) for (int m = 0; m < 4; ++m) best[m] = std::min(best[m], run(m));
  const double fl = 4.0 * rows * n * d;
  printf("runs=%ld d=%ld %s: separate %.1f fused %.1f fused+myproj %.1f mine both %.1f GFLOP/s\n", runs, d, seeds ? "seeds" : "shared", fl / best[0] / 1e9, fl / best[1] / 1e9, fl / best[2] / 1e9, fl / best[3] / 1e9);
}
