// CPU kernels of the `parent` layout (torchfpe/core/layouts/parent.py), built on first use by
// torch.utils.cpp_extension (see native.py). float32, AVX-512 only: `available()` says whether this
// CPU runs them; every other case takes the layout's torch path.
//
// The layout: V (P, Q) holds the parent's weights in the parent's order; child c(i, j) in [0, RA) of
// entry (i, j) is stored in NB = ceil(log2 RA) bit planes, planes[q, i, byte] bit (j % 8) of byte
// j / 8 holding bit q of c(i, j) (rows padded to S bytes, S even). Expanded row RA * i + k sums the
// entries of parent row i whose child is k:
//
//     y[n, RA * i + k] = sum_j V[i, j] x[n, j] [c(i, j) == k]
//
// One pass over V reads each weight once (plus NB bits), as the parent's product does.

#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define TORCHFPE_X86 1
#define TORCHFPE_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl")))
#endif

namespace {

#ifdef TORCHFPE_X86

#ifndef PREFETCH
#define PREFETCH 1024  // floats ahead on the weight row: 1024 measured 1.2x at alpha 4 where 256 gave 1.4-1.7x
#endif

TORCHFPE_AVX512 inline uint32_t load_bits(const uint8_t* row, int64_t j) {
  uint16_t word;
  std::memcpy(&word, row + j / 8, sizeof(word));  // j is a multiple of 16: bits j .. j + 15
  return word;
}

// The lanes of chunk j whose child is k, from the NB bit planes of one row.
template <int NB>
TORCHFPE_AVX512 inline __mmask16 child_mask(const uint32_t (&bits)[NB], int k) {
  uint32_t mask = 0xFFFF;
  for (int q = 0; q < NB; ++q) mask &= ((k >> q) & 1) ? bits[q] : ~bits[q];
  return static_cast<__mmask16>(mask);
}

template <int NB>
TORCHFPE_AVX512 inline __m512i child_ids(const uint32_t (&bits)[NB]) {
  __m512i ids = _mm512_setzero_si512();
  for (int q = 0; q < NB; ++q)
    ids = _mm512_or_si512(ids, _mm512_maskz_set1_epi32(static_cast<__mmask16>(bits[q]), 1 << q));
  return ids;
}

// One chunk of 16 inputs of row i for G rows of x: acc[g][k] += V x over the lanes whose child is k.
template <int RA, int NB, int G>
TORCHFPE_AVX512 __attribute__((always_inline)) inline void forward_step(__m512 (&acc)[G][RA], const float* w, const uint8_t* const (&rows)[NB],
                                         const float* x, int64_t Q, int64_t j, __mmask16 lanes) {
  _mm_prefetch(reinterpret_cast<const char*>(w + j + PREFETCH), _MM_HINT_T0);
  const __m512 wv = _mm512_maskz_loadu_ps(lanes, w + j);
  uint32_t bits[NB];
  for (int q = 0; q < NB; ++q) bits[q] = load_bits(rows[q], j);
  __m512 p[G];
  for (int g = 0; g < G; ++g) p[g] = _mm512_mul_ps(wv, _mm512_maskz_loadu_ps(lanes, x + g * Q + j));
  for (int k = 0; k < RA; ++k) {
    const __mmask16 m = child_mask<NB>(bits, k) & lanes;
    for (int g = 0; g < G; ++g) acc[g][k] = _mm512_mask_add_ps(acc[g][k], m, acc[g][k], p[g]);
  }
}

// Forward of parent rows i0 .. i1 for G rows of x at once (G * RA accumulators in registers); with
// SETS = 2 two sets of accumulators alternate, hiding the add latency for one row of x.
template <int RA, int NB, int G, int SETS>
TORCHFPE_AVX512 void forward_rows(const float* V, const uint8_t* planes, int64_t P, int64_t Q, int64_t S,
                                  const float* x, float* y, int64_t i0, int64_t i1) {
  const int64_t full = Q / 16 * 16;
  const __mmask16 every = static_cast<__mmask16>(0xFFFF);
  const __mmask16 tail = static_cast<__mmask16>((1u << (Q - full)) - 1);
  for (int64_t i = i0; i < i1; ++i) {
    const float* w = V + i * Q;
    const uint8_t* rows[NB];
    for (int q = 0; q < NB; ++q) rows[q] = planes + (q * P + i) * S;
    __m512 acc[SETS][G][RA];
    for (int s = 0; s < SETS; ++s)
      for (int g = 0; g < G; ++g)
        for (int k = 0; k < RA; ++k) acc[s][g][k] = _mm512_setzero_ps();
    int64_t j = 0;
    if (SETS == 2) {
      for (; j + 32 <= full; j += 32) {  // two calls with constant indices keep both sets in registers
        forward_step<RA, NB, G>(acc[0], w, rows, x, Q, j, every);
        forward_step<RA, NB, G>(acc[SETS - 1], w, rows, x, Q, j + 16, every);
      }
    }
    for (; j < full; j += 16) forward_step<RA, NB, G>(acc[0], w, rows, x, Q, j, every);
    if (full < Q) forward_step<RA, NB, G>(acc[0], w, rows, x, Q, full, tail);
    for (int g = 0; g < G; ++g)
      for (int k = 0; k < RA; ++k) {
        __m512 total = acc[0][g][k];
        for (int s = 1; s < SETS; ++s) total = _mm512_add_ps(total, acc[s][g][k]);
        y[g * RA * P + i * RA + k] = _mm512_reduce_add_ps(total);
      }
  }
}

// Rows of x in groups of G; parent rows split over torch's intra-op threads.
template <int RA, int NB>
TORCHFPE_AVX512 void forward_kernel(const float* V, const uint8_t* planes, int64_t P, int64_t Q, int64_t S,
                                    const float* x, int64_t B, float* y) {
  constexpr int G = RA <= 4 ? 4 : (RA <= 8 ? 2 : 1);
  at::parallel_for(0, P, 16, [&](int64_t i0, int64_t i1) {
    if (B == 1) {
      forward_rows<RA, NB, 1, 2>(V, planes, P, Q, S, x, y, i0, i1);
      return;
    }
    int64_t n = 0;
    for (; n + G <= B; n += G) forward_rows<RA, NB, G, 1>(V, planes, P, Q, S, x + n * Q, y + n * RA * P, i0, i1);
    for (; n < B; ++n) forward_rows<RA, NB, 1, 1>(V, planes, P, Q, S, x + n * Q, y + n * RA * P, i0, i1);
  });
}

// Backward in one pass over V: grad_x[n, j] += V[i, j] gy[n, RA i + c(i, j)] and
// grad_V[i, j] = sum_n gy[n, RA i + c(i, j)] x[n, j]; the RA values gy[n, RA i : RA i + RA] are
// spread to the lanes by a permute on the child ids.
template <int RA, int NB>
TORCHFPE_AVX512 void backward_columns(const float* V, const uint8_t* planes, int64_t P, int64_t Q, int64_t S,
                                      const float* x, const float* gy, int64_t B, float* gx, float* gV,
                                      int64_t j0, int64_t j1) {
  static_assert(RA <= 16, "one register holds a parent's children");
  const int64_t full = Q / 16 * 16;
  const __mmask16 tail = static_cast<__mmask16>((1u << (Q - full)) - 1);
  const __mmask16 first = static_cast<__mmask16>((1u << RA) - 1);
  constexpr int MAXB = 16;
  __m512 source[MAXB];
  for (int64_t n0 = 0; n0 < B; n0 += MAXB) {
    const int64_t nb = std::min<int64_t>(MAXB, B - n0);
    for (int64_t i = 0; i < P; ++i) {
      const float* w = V + i * Q;
      const uint8_t* rows[NB];
      for (int q = 0; q < NB; ++q) rows[q] = planes + (q * P + i) * S;
      for (int64_t n = 0; n < nb; ++n) source[n] = _mm512_maskz_loadu_ps(first, gy + (n0 + n) * RA * P + i * RA);
      for (int64_t j = j0; j < j1; j += 16) {
        const __mmask16 lanes = j >= full ? tail : static_cast<__mmask16>(0xFFFF);
        uint32_t bits[NB];
        for (int q = 0; q < NB; ++q) bits[q] = load_bits(rows[q], j);
        const __m512i ids = child_ids<NB>(bits);
        _mm_prefetch(reinterpret_cast<const char*>(w + j + PREFETCH), _MM_HINT_T0);
        const __m512 wv = _mm512_maskz_loadu_ps(lanes, w + j);
        __m512 gv = _mm512_setzero_ps();
        for (int64_t n = 0; n < nb; ++n) {
          const __m512 sel = _mm512_permutexvar_ps(ids, source[n]);
          if (gx != nullptr) {
            float* row = gx + (n0 + n) * Q + j;
            _mm512_mask_storeu_ps(row, lanes, _mm512_fmadd_ps(wv, sel, _mm512_maskz_loadu_ps(lanes, row)));
          }
          if (gV != nullptr) gv = _mm512_fmadd_ps(sel, _mm512_maskz_loadu_ps(lanes, x + (n0 + n) * Q + j), gv);
        }
        if (gV != nullptr) {
          float* out = gV + i * Q + j;
          if (n0 > 0) gv = _mm512_add_ps(gv, _mm512_maskz_loadu_ps(lanes, out));
          _mm512_mask_storeu_ps(out, lanes, gv);
        }
      }
    }
  }
}

// Columns split over torch's intra-op threads (in chunks of 16), so no two threads add to one grad_x.
template <int RA, int NB>
TORCHFPE_AVX512 void backward_kernel(const float* V, const uint8_t* planes, int64_t P, int64_t Q, int64_t S,
                                     const float* x, const float* gy, int64_t B, float* gx, float* gV) {
  const int64_t chunks = (Q + 15) / 16;
  at::parallel_for(0, chunks, 16, [&](int64_t c0, int64_t c1) {
    backward_columns<RA, NB>(V, planes, P, Q, S, x, gy, B, gx, gV, c0 * 16, std::min(Q, c1 * 16));
  });
}

#define TORCHFPE_FOR_EACH_RA(CASE) CASE(2, 1) CASE(3, 2) CASE(4, 2) CASE(5, 3) CASE(6, 3) CASE(7, 3) CASE(8, 3) \
  CASE(16, 4)

#endif  // TORCHFPE_X86

void check(const torch::Tensor& V, const torch::Tensor& planes, const torch::Tensor& x, int64_t ra) {
  TORCH_CHECK(V.dim() == 2 && V.scalar_type() == torch::kFloat && V.is_contiguous() && V.device().is_cpu(),
              "values must be a contiguous float32 CPU matrix");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat && x.is_contiguous() && x.size(1) == V.size(1),
              "input must be a contiguous float32 (batch, in) matrix");
  TORCH_CHECK(planes.dim() == 3 && planes.scalar_type() == torch::kByte && planes.is_contiguous() &&
                  planes.size(1) == V.size(0) && planes.size(2) % 2 == 0 && planes.size(2) * 8 >= V.size(1),
              "planes must be contiguous uint8 (bits, out, even bytes >= in / 8)");
  int bits = 0;
  while ((1 << bits) < ra) ++bits;
  TORCH_CHECK(planes.size(0) == bits, "planes must hold ceil(log2(children)) bit planes");
}

}  // namespace

bool available() {
#ifdef TORCHFPE_X86
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
#else
  return false;
#endif
}

std::vector<int64_t> children_supported() {
  return {2, 3, 4, 5, 6, 7, 8, 16};
}

torch::Tensor forward(torch::Tensor V, torch::Tensor planes, torch::Tensor x, int64_t ra) {
  check(V, planes, x, ra);
  TORCH_CHECK(available(), "this CPU lacks AVX-512");
  const int64_t P = V.size(0), Q = V.size(1), S = planes.size(2), B = x.size(0);
  auto y = torch::empty({B, ra * P}, x.options());
#ifdef TORCHFPE_X86
  const float* v = V.data_ptr<float>();
  const uint8_t* p = planes.data_ptr<uint8_t>();
  switch (ra) {
#define CASE(RA, NB) \
    case RA: forward_kernel<RA, NB>(v, p, P, Q, S, x.data_ptr<float>(), B, y.data_ptr<float>()); return y;
    TORCHFPE_FOR_EACH_RA(CASE)
#undef CASE
  }
#endif
  TORCH_CHECK(false, "unsupported number of children: ", ra);
}

std::vector<torch::Tensor> backward(torch::Tensor V, torch::Tensor planes, torch::Tensor x, torch::Tensor gy,
                                    int64_t ra, bool need_input, bool need_values) {
  check(V, planes, x, ra);
  TORCH_CHECK(available(), "this CPU lacks AVX-512");
  const int64_t P = V.size(0), Q = V.size(1), S = planes.size(2), B = x.size(0);
  TORCH_CHECK(gy.dim() == 2 && gy.scalar_type() == torch::kFloat && gy.is_contiguous() && gy.size(0) == B &&
                  gy.size(1) == ra * P, "grad_output must be a contiguous float32 (batch, children * out) matrix");
  auto gx = need_input ? torch::zeros_like(x) : torch::Tensor();
  auto gV = need_values ? torch::empty_like(V) : torch::Tensor();
#ifdef TORCHFPE_X86
  float* gxp = need_input ? gx.data_ptr<float>() : nullptr;
  float* gvp = need_values ? gV.data_ptr<float>() : nullptr;
  const float* v = V.data_ptr<float>();
  const uint8_t* p = planes.data_ptr<uint8_t>();
  switch (ra) {
#define CASE(RA, NB)                                                                                  \
    case RA:                                                                                          \
      backward_kernel<RA, NB>(v, p, P, Q, S, x.data_ptr<float>(), gy.data_ptr<float>(), B, gxp, gvp); \
      return {gx, gV};
    TORCHFPE_FOR_EACH_RA(CASE)
#undef CASE
  }
#endif
  TORCH_CHECK(false, "unsupported number of children: ", ra);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("available", &available, "whether this CPU runs the kernels (AVX-512)");
  m.def("children_supported", &children_supported, "the children per parent the kernels are built for");
  m.def("forward", &forward, "y = the parent-order product (batch, children * out)");
  m.def("backward", &backward, "(grad_input, grad_values) of the parent-order product");
}
