// Hand-written AVX2/FMA kernels for the direct step's two products, without packing: an
// experiment that did not beat OpenBLAS (benchmarks/RESULTS.md, section "2026-12-02, 06:00
// UTC"), kept so that it need not be redone. Not part of the package.
//
//     update_block: C <- where(keep, C - A Z - [col < support] shift, 0), 6 x 16 register
//                   tiles over rows of Z, in chunks of `chunk` rows, prefetching the next tile
//     proj_block:   P = W Z^T, 4 x 3 tiles of dot products along d
//
// Build and run: see harness.cc.

#include <immintrin.h>
#include <cstdint>
#include <cstring>
#include <algorithm>
#define TARGET __attribute__((target("avx2,fma")))

namespace {
// Lanes j with j < count all ones.
TARGET inline __m256i FirstLanes(int64_t count) {
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)std::max<int64_t>(0, std::min<int64_t>(count, 8))), iota);
}
template <bool TAIL> TARGET inline __m256 Load(const float* p, __m256i m) {
  if constexpr (TAIL) return _mm256_maskload_ps(p, m); else return _mm256_loadu_ps(p);
}
template <bool TAIL> TARGET inline void Store(float* p, __m256i m, __m256 v) {
  if constexpr (TAIL) _mm256_maskstore_ps(p, m, v); else _mm256_storeu_ps(p, v);
}
// 0 / ~0 per lane from 8 bools.
TARGET inline __m256 KeepBits(const uint8_t* keep) {
  int64_t bytes; std::memcpy(&bytes, keep, 8);
  __m256i k = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(bytes));
  return _mm256_castsi256_ps(_mm256_sub_epi32(_mm256_setzero_si256(), k));
}

// C[R x 16] <- where(keep, C - A Z - [col < support] shift, 0)
template <int R, bool TAIL>
TARGET void UpdateTile(float* c, int64_t d, const float* a, int64_t n, const float* z,
                       const uint8_t* keep, const float* shift, int64_t col0, int64_t width,
                       int64_t support) {
  const __m256i m0 = FirstLanes(width), m1 = FirstLanes(width - 8);
  __m256 acc[R][2];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    acc[r][0] = Load<TAIL>(c + r * d, m0);
    acc[r][1] = Load<TAIL>(c + r * d + 8, m1);
  }
  for (int64_t k = 0; k < n; ++k) {
    const __m256 b0 = Load<TAIL>(z + k * d, m0), b1 = Load<TAIL>(z + k * d + 8, m1);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 x = _mm256_broadcast_ss(a + r * n + k);
      acc[r][0] = _mm256_fnmadd_ps(x, b0, acc[r][0]);
      acc[r][1] = _mm256_fnmadd_ps(x, b1, acc[r][1]);
    }
  }
  if (col0 < support) {
    const __m256 s0 = _mm256_castsi256_ps(FirstLanes(support - col0));
    const __m256 s1 = _mm256_castsi256_ps(FirstLanes(support - col0 - 8));
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 x = _mm256_broadcast_ss(shift + r);
      acc[r][0] = _mm256_sub_ps(acc[r][0], _mm256_and_ps(x, s0));
      acc[r][1] = _mm256_sub_ps(acc[r][1], _mm256_and_ps(x, s1));
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    uint8_t tmp[16] = {0};
    const uint8_t* kp = keep + r * d;
    if constexpr (TAIL) { std::memcpy(tmp, kp, width); kp = tmp; }
    Store<TAIL>(c + r * d, m0, _mm256_and_ps(acc[r][0], KeepBits(kp)));
    Store<TAIL>(c + r * d + 8, m1, _mm256_and_ps(acc[r][1], KeepBits(kp + 8)));
  }
}

using UpdateFn = void (*)(float*, int64_t, const float*, int64_t, const float*, const uint8_t*,
                          const float*, int64_t, int64_t, int64_t);
constexpr UpdateFn kUpdate[2][7] = {
    {nullptr, UpdateTile<1, false>, UpdateTile<2, false>, UpdateTile<3, false>,
     UpdateTile<4, false>, UpdateTile<5, false>, UpdateTile<6, false>},
    {nullptr, UpdateTile<1, true>, UpdateTile<2, true>, UpdateTile<3, true>,
     UpdateTile<4, true>, UpdateTile<5, true>, UpdateTile<6, true>}};

TARGET inline float Sum(__m256 v) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}

// P[RW x RZ] = W[RW rows] . Z[RZ rows], rows of length d
template <int RW, int RZ>
TARGET void ProjTile(const float* w, const float* z, int64_t d, float* p, int64_t n) {
  __m256 acc[RW][RZ];
#pragma GCC unroll 4
  for (int r = 0; r < RW; ++r)
#pragma GCC unroll 4
    for (int q = 0; q < RZ; ++q) acc[r][q] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= d; k += 8) {
    __m256 zv[RZ];
#pragma GCC unroll 4
    for (int q = 0; q < RZ; ++q) zv[q] = _mm256_loadu_ps(z + q * d + k);
#pragma GCC unroll 4
    for (int r = 0; r < RW; ++r) {
      const __m256 x = _mm256_loadu_ps(w + r * d + k);
#pragma GCC unroll 4
      for (int q = 0; q < RZ; ++q) acc[r][q] = _mm256_fmadd_ps(x, zv[q], acc[r][q]);
    }
  }
  if (k < d) {
    const __m256i m = FirstLanes(d - k);
    __m256 zv[RZ];
#pragma GCC unroll 4
    for (int q = 0; q < RZ; ++q) zv[q] = _mm256_maskload_ps(z + q * d + k, m);
#pragma GCC unroll 4
    for (int r = 0; r < RW; ++r) {
      const __m256 x = _mm256_maskload_ps(w + r * d + k, m);
#pragma GCC unroll 4
      for (int q = 0; q < RZ; ++q) acc[r][q] = _mm256_fmadd_ps(x, zv[q], acc[r][q]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < RW; ++r)
#pragma GCC unroll 4
    for (int q = 0; q < RZ; ++q) p[r * n + q] = Sum(acc[r][q]);
}
using ProjFn = void (*)(const float*, const float*, int64_t, float*, int64_t);
constexpr ProjFn kProj[5][4] = {
    {nullptr, nullptr, nullptr, nullptr},
    {nullptr, ProjTile<1, 1>, ProjTile<1, 2>, ProjTile<1, 3>},
    {nullptr, ProjTile<2, 1>, ProjTile<2, 2>, ProjTile<2, 3>},
    {nullptr, ProjTile<3, 1>, ProjTile<3, 2>, ProjTile<3, 3>},
    {nullptr, ProjTile<4, 1>, ProjTile<4, 2>, ProjTile<4, 3>}};
}  // namespace

extern "C" void update_block(float* c, const float* a, const float* z, const uint8_t* keep,
                             const float* shift, int64_t rows, int64_t n, int64_t d,
                             int64_t support, int64_t chunk, int64_t prefetch) {
  for (int64_t i0 = 0; i0 < rows; i0 += chunk) {
    const int64_t i1 = std::min(rows, i0 + chunk);
    for (int64_t j = 0; j < d; j += 16) {
      const int64_t width = std::min<int64_t>(16, d - j);
      const auto& fns = kUpdate[width < 16];
      for (int64_t i = i0; i < i1; i += 6) {
        const int64_t r = std::min<int64_t>(6, i1 - i);
        if (prefetch && j + 16 < d) {
          for (int64_t q = 0; q < r; ++q) {
            _mm_prefetch(reinterpret_cast<const char*>(c + (i + q) * d + j + 16 + 15), _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(keep + (i + q) * d + j + 16 + 15), _MM_HINT_T0);
          }
        }
        fns[r](c + i * d + j, d, a + i * n, n, z + j, keep + i * d + j, shift + i, j, width,
               support);
      }
    }
  }
}

extern "C" void proj_block(const float* w, const float* z, float* p, int64_t rows, int64_t n,
                           int64_t d) {
  for (int64_t i = 0; i < rows; i += 4) {
    const int64_t rw = std::min<int64_t>(4, rows - i);
    for (int64_t q = 0; q < n; q += 3) {
      const int64_t rz = std::min<int64_t>(3, n - q);
      kProj[rw][rz](w + i * d, z + q * d, d, p + i * n + q, n);
    }
  }
}
