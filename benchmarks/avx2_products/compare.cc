// OpenBLAS's sgemm (numpy's wheel) against kernels.cc, each product alone, streaming over a
// W of ROWS x D in blocks of BLK rows on THREADS threads; best of 15 in alternation.
//
//     g++ -std=c++17 -O3 -fno-strict-aliasing compare.cc kernels.cc -ldl -lpthread -o compare
//     ./compare .venv/lib/python3.11/site-packages/numpy.libs/libscipy_openblas64_*.so \
//         25600 1000 128 2      # ROWS D BLK THREADS [CHUNK]
#include <dlfcn.h>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>
#include <random>
#include <algorithm>
#include <string>
extern "C" void update_block(float* c, const float* a, const float* z, const uint8_t* keep,
                             const float* shift, int64_t rows, int64_t n, int64_t d,
                             int64_t support, int64_t chunk, int64_t prefetch);
extern "C" void proj_block(const float* w, const float* z, float* p, int64_t rows, int64_t n, int64_t d);
using Sgemm = void (*)(int, int, int, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t, float, float*, int64_t);
Sgemm sgemm; int (*setlocal)(int);
void MaskRow(float* row, const uint8_t* keep, float shift, int64_t support, int64_t d) {
  for (int64_t k = 0; k < support; ++k) row[k] -= shift;
  uint32_t* bits = reinterpret_cast<uint32_t*>(row);
  for (int64_t k = 0; k < d; ++k) bits[k] &= 0u - static_cast<uint32_t>(keep[k]);
}
int main(int argc, char** argv) {
  const char* lib = argv[1];
  int64_t rows = atol(argv[2]), d = atol(argv[3]), blk = atol(argv[4]), nthreads = atol(argv[5]);
  int64_t chunk = argc > 6 ? atol(argv[6]) : 48;
  const int64_t n = 100, support = 10;
  void* h = dlopen(lib, RTLD_NOW);
  sgemm = (Sgemm)dlsym(h, "scipy_cblas_sgemm64_");
  setlocal = (int (*)(int))dlsym(h, "openblas_set_num_threads_local");
  std::mt19937 g(0); std::normal_distribution<float> nd;
  std::vector<float> W(rows * d), A(rows * n), Z(n * d), P(rows * n), S(rows, 0.0f);
  std::vector<uint8_t> K(rows * d);
  for (auto& x : W) x = nd(g); for (auto& x : A) x = 1e-4f * nd(g); for (auto& x : Z) x = nd(g);
  for (auto& x : K) x = (g() % 10) < 7;
  std::vector<std::pair<int64_t, int64_t>> blocks;
  for (int64_t i = 0; i < rows; i += blk) blocks.push_back({i, std::min(blk, rows - i)});
  auto run = [&](int mode) {
    auto worker = [&](int t) {
      setlocal(1);
      for (size_t b = t; b < blocks.size(); b += nthreads) {
        auto [i, c] = blocks[b];
        float* w = W.data() + i * d;
        if (mode == 0) sgemm(101, 111, 112, c, n, d, 1.0f, w, d, Z.data(), d, 0.0f, P.data() + i * n, n);
        else if (mode == 1) proj_block(w, Z.data(), P.data() + i * n, c, n, d);
        else if (mode == 2) {
          sgemm(101, 111, 111, c, d, n, -1.0f, A.data() + i * n, n, Z.data(), d, 1.0f, w, d);
          for (int64_t j = 0; j < c; ++j) MaskRow(w + j * d, K.data() + (i + j) * d, S[i + j], support, d);
        } else update_block(w, A.data() + i * n, Z.data(), K.data() + i * d, S.data() + i, c, n, d, support, chunk, 1);
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
  for (int rep = 0; rep < 15; ++rep) for (int m = 0; m < 4; ++m) best[m] = std::min(best[m], run(m));
  const double fl = 2.0 * rows * n * d;
  printf("rows=%ld d=%ld blk=%ld threads=%ld chunk=%ld: proj sgemm %.1f mine %.1f | update sgemm+mask %.1f mine %.1f GFLOP/s\n",
         rows, d, blk, nthreads, chunk, fl / best[0] / 1e9, fl / best[1] / 1e9, fl / best[2] / 1e9, fl / best[3] / 1e9);
}
