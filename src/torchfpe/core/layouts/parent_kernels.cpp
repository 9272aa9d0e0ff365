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
#include <type_traits>
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

// ---- large batches: tiles of NT examples, the entries of each child visited in column order ----
// order (P, Q): each row's columns sorted by child (stable), starts (P, RA + 1): where each child's
// columns begin in its row. Both are derived from the bit planes once (parent.py) and kept.

// XT (Q, NT) = X[n0 : n0 + nt, :] transposed, lanes past nt zero.
TORCHFPE_AVX512 void transpose_tile(const float* X, int64_t Q, int64_t n0, int64_t nt, int64_t NT, float* XT) {
  for (int64_t j = 0; j < Q; ++j) {
    float* row = XT + j * NT;
    int64_t l = 0;
    for (; l < nt; ++l) row[l] = X[(n0 + l) * Q + j];
    for (; l < NT; ++l) row[l] = 0.f;
  }
}

// YT[RA i + k, n0 : n0 + nt] = sum over child k's columns j of V[i, j] XT[j, :], rows i0 .. i1.
template <typename IDX, int VECS>
TORCHFPE_AVX512 void tiled_forward_rows(const float* V, const IDX* order, const int32_t* starts, int64_t Q, int64_t RA,
                                        const float* XT, float* YT, int64_t B, int64_t n0, int64_t nt, int64_t i0,
                                        int64_t i1) {
  constexpr int NT = 16 * VECS;
  const __mmask16 lanes[4] = {
      static_cast<__mmask16>(nt >= 16 ? 0xFFFF : (1u << std::max<int64_t>(nt, 0)) - 1),
      static_cast<__mmask16>(nt >= 32 ? 0xFFFF : nt <= 16 ? 0 : (1u << (nt - 16)) - 1),
      static_cast<__mmask16>(nt >= 48 ? 0xFFFF : nt <= 32 ? 0 : (1u << (nt - 32)) - 1),
      static_cast<__mmask16>(nt >= 64 ? 0xFFFF : nt <= 48 ? 0 : (1u << (nt - 48)) - 1)};
  for (int64_t i = i0; i < i1; ++i) {
    const float* w = V + i * Q;
    const IDX* cols = order + i * Q;
    for (int64_t k = 0; k < RA; ++k) {
      __m512 a[VECS], b[VECS];
      for (int v = 0; v < VECS; ++v) a[v] = b[v] = _mm512_setzero_ps();
      int64_t e = starts[i * (RA + 1) + k];
      const int64_t end = starts[i * (RA + 1) + k + 1];
      for (; e + 2 <= end; e += 2) {  // two entries in flight: two sets of accumulators
        const int64_t j0 = cols[e], j1 = cols[e + 1];
        const __m512 v0 = _mm512_set1_ps(w[j0]), v1 = _mm512_set1_ps(w[j1]);
        const float* x0 = XT + j0 * NT;
        const float* x1 = XT + j1 * NT;
        for (int v = 0; v < VECS; ++v) {
          a[v] = _mm512_fmadd_ps(v0, _mm512_loadu_ps(x0 + 16 * v), a[v]);
          b[v] = _mm512_fmadd_ps(v1, _mm512_loadu_ps(x1 + 16 * v), b[v]);
        }
      }
      if (e < end) {
        const int64_t j0 = cols[e];
        const __m512 v0 = _mm512_set1_ps(w[j0]);
        for (int v = 0; v < VECS; ++v) a[v] = _mm512_fmadd_ps(v0, _mm512_loadu_ps(XT + j0 * NT + 16 * v), a[v]);
      }
      float* out = YT + (i * RA + k) * B + n0;
      for (int v = 0; v < VECS; ++v) _mm512_mask_storeu_ps(out + 16 * v, lanes[v], _mm512_add_ps(a[v], b[v]));
    }
  }
}

// dXT[j, :] += V[i, j] GYT[RA i + k, :] for child k's columns j, rows i0 .. i1 (one tile).
template <typename IDX, int VECS>
TORCHFPE_AVX512 void tiled_input_grad(const float* V, const IDX* order, const int32_t* starts, int64_t P, int64_t Q,
                                      int64_t RA, const float* GYT, float* DXT) {
  constexpr int NT = 16 * VECS;
  for (int64_t i = 0; i < P; ++i) {
    const float* w = V + i * Q;
    const IDX* cols = order + i * Q;
    for (int64_t k = 0; k < RA; ++k) {
      __m512 g[VECS];
      for (int v = 0; v < VECS; ++v) g[v] = _mm512_loadu_ps(GYT + (i * RA + k) * NT + 16 * v);
      const int64_t begin = starts[i * (RA + 1) + k], end = starts[i * (RA + 1) + k + 1];
      for (int64_t e = begin; e < end; ++e) {
        const int64_t j = cols[e];
        const __m512 wv = _mm512_set1_ps(w[j]);
        float* row = DXT + j * NT;
        for (int v = 0; v < VECS; ++v)
          _mm512_storeu_ps(row + 16 * v, _mm512_fmadd_ps(wv, g[v], _mm512_loadu_ps(row + 16 * v)));
      }
    }
  }
}

// dV[i, j] = sum_n G[i, n, c(i, j)] X[n, j] for the columns of one block of 8 vectors (128 columns),
// every row i; G (P, B, RA) holds each row's RA output gradients per example, contiguous.
template <int NB>
TORCHFPE_AVX512 void tiled_value_grad(const uint8_t* planes, int64_t P, int64_t Q, int64_t S, int64_t RA,
                                      const float* G, const float* X, int64_t B, float* DV, int64_t j0) {
  constexpr int VECS = 8;
  const int64_t full = Q / 16 * 16;
  const __mmask16 first = static_cast<__mmask16>((1u << RA) - 1);
  __mmask16 lanes[VECS];
  int count = 0;
  for (int v = 0; v < VECS; ++v) {
    const int64_t j = j0 + 16 * v;
    lanes[v] = j >= Q ? 0 : (j >= full ? static_cast<__mmask16>((1u << (Q - full)) - 1) : static_cast<__mmask16>(0xFFFF));
    if (lanes[v]) count = v + 1;
  }
  for (int64_t i = 0; i < P; ++i) {
    __m512i ids[VECS];
    __m512 acc[VECS];
    for (int v = 0; v < count; ++v) {
      uint32_t bits[NB];
      for (int q = 0; q < NB; ++q) bits[q] = load_bits(planes + (q * P + i) * S, j0 + 16 * v);
      ids[v] = child_ids<NB>(bits);
      acc[v] = _mm512_setzero_ps();
    }
    const float* g = G + i * B * RA;
    for (int64_t n = 0; n < B; ++n) {
      const __m512 source = _mm512_maskz_loadu_ps(first, g + n * RA);
      const float* x = X + n * Q + j0;
      for (int v = 0; v < count; ++v)
        acc[v] = _mm512_fmadd_ps(_mm512_permutexvar_ps(ids[v], source), _mm512_maskz_loadu_ps(lanes[v], x + 16 * v),
                                 acc[v]);
    }
    for (int v = 0; v < count; ++v) _mm512_mask_storeu_ps(DV + i * Q + j0 + 16 * v, lanes[v], acc[v]);
  }
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
  // every gV entry is written once per 16 examples: none are when the batch is empty (issue 19)
  auto gV = need_values ? (B == 0 ? torch::zeros_like(V) : torch::empty_like(V)) : torch::Tensor();
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

template <typename Fn>
void with_index(const torch::Tensor& order, Fn fn) {
  if (order.scalar_type() == torch::kShort) fn(order.data_ptr<int16_t>());
  else fn(order.data_ptr<int32_t>());
}

void check_order(const torch::Tensor& V, const torch::Tensor& order, const torch::Tensor& starts, int64_t ra) {
  TORCH_CHECK(order.dim() == 2 && order.sizes() == V.sizes() && order.is_contiguous() &&
                  (order.scalar_type() == torch::kShort || order.scalar_type() == torch::kInt),
              "order must be a contiguous int16 or int32 tensor of the values' shape");
  TORCH_CHECK(starts.dim() == 2 && starts.size(0) == V.size(0) && starts.size(1) == ra + 1 && starts.is_contiguous() &&
                  starts.scalar_type() == torch::kInt, "starts must be contiguous int32 (out, children + 1)");
}

// The tile width: 64 examples while a tile of the input (Q x 64 floats) fits in 1 MiB, else 32.
int64_t tile_width(int64_t Q) { return Q * 64 * 4 <= (1 << 20) ? 64 : 32; }

torch::Tensor forward_tiled(torch::Tensor V, torch::Tensor order, torch::Tensor starts, torch::Tensor x, int64_t ra,
                            int64_t tile) {
  TORCH_CHECK(available(), "this CPU lacks AVX-512");
  check_order(V, order, starts, ra);
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat && x.is_contiguous() && x.size(1) == V.size(1),
              "input must be a contiguous float32 (batch, in) matrix");
  const int64_t P = V.size(0), Q = V.size(1), B = x.size(0), NT = tile == 32 || tile == 64 ? tile : tile_width(Q);
  auto yt = torch::empty({ra * P, B}, x.options());
#ifdef TORCHFPE_X86
  auto xt = torch::empty({Q, NT}, x.options());
  for (int64_t n0 = 0; n0 < B; n0 += NT) {
    const int64_t nt = std::min(NT, B - n0);
    transpose_tile(x.data_ptr<float>(), Q, n0, nt, NT, xt.data_ptr<float>());
    with_index(order, [&](auto* idx) {
      at::parallel_for(0, P, 16, [&](int64_t i0, int64_t i1) {
        if (NT == 64)
          tiled_forward_rows<std::remove_const_t<std::remove_pointer_t<decltype(idx)>>, 4>(
              V.data_ptr<float>(), idx, starts.data_ptr<int32_t>(), Q, ra, xt.data_ptr<float>(), yt.data_ptr<float>(),
              B, n0, nt, i0, i1);
        else
          tiled_forward_rows<std::remove_const_t<std::remove_pointer_t<decltype(idx)>>, 2>(
              V.data_ptr<float>(), idx, starts.data_ptr<int32_t>(), Q, ra, xt.data_ptr<float>(), yt.data_ptr<float>(),
              B, n0, nt, i0, i1);
      });
    });
  }
#endif
  return yt.t();  // (B, RA * P), a transposed view
}

std::vector<torch::Tensor> backward_tiled(torch::Tensor V, torch::Tensor planes, torch::Tensor order,
                                          torch::Tensor starts, torch::Tensor x, torch::Tensor gy, int64_t ra,
                                          bool need_input, bool need_values, int64_t tile) {
  TORCH_CHECK(available(), "this CPU lacks AVX-512");
  check(V, planes, x, ra);
  check_order(V, order, starts, ra);
  const int64_t P = V.size(0), Q = V.size(1), S = planes.size(2), B = x.size(0);
  const int64_t NT = tile == 32 || tile == 64 ? tile : tile_width(Q);
  TORCH_CHECK(gy.dim() == 2 && gy.size(0) == B && gy.size(1) == ra * P && gy.scalar_type() == torch::kFloat,
              "grad_output must be float32 (batch, children * out)");
  TORCH_CHECK(ra <= 16, "at most 16 children");
  torch::Tensor gx, gV;
#ifdef TORCHFPE_X86
  if (need_input) {
    auto gyt = gy.t().contiguous();  // (RA P, B)
    gx = torch::empty({B, Q}, x.options());
    const int64_t tiles = (B + NT - 1) / NT;
    at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
      auto tile = torch::empty({ra * P, NT}, x.options());
      auto dxt = torch::empty({Q, NT}, x.options());
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t n0 = t * NT, nt = std::min(NT, B - n0);
        tile.zero_();
        tile.narrow(1, 0, nt).copy_(gyt.narrow(1, n0, nt));
        dxt.zero_();
        with_index(order, [&](auto* idx) {
          using I = std::remove_const_t<std::remove_pointer_t<decltype(idx)>>;
          if (NT == 64)
            tiled_input_grad<I, 4>(V.data_ptr<float>(), idx, starts.data_ptr<int32_t>(), P, Q, ra,
                                   tile.data_ptr<float>(), dxt.data_ptr<float>());
          else
            tiled_input_grad<I, 2>(V.data_ptr<float>(), idx, starts.data_ptr<int32_t>(), P, Q, ra,
                                   tile.data_ptr<float>(), dxt.data_ptr<float>());
        });
        gx.narrow(0, n0, nt).copy_(dxt.narrow(1, 0, nt).t());
      }
    });
  }
  if (need_values) {
    auto g = gy.reshape({B, P, ra}).permute({1, 0, 2}).contiguous();  // (P, B, RA)
    gV = torch::empty_like(V);
    const int64_t blocks = (Q + 127) / 128;
    int bits = 0;
    while ((1 << bits) < ra) ++bits;
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        switch (bits) {
          case 1: tiled_value_grad<1>(planes.data_ptr<uint8_t>(), P, Q, S, ra, g.data_ptr<float>(),
                                      x.data_ptr<float>(), B, gV.data_ptr<float>(), b * 128); break;
          case 2: tiled_value_grad<2>(planes.data_ptr<uint8_t>(), P, Q, S, ra, g.data_ptr<float>(),
                                      x.data_ptr<float>(), B, gV.data_ptr<float>(), b * 128); break;
          case 3: tiled_value_grad<3>(planes.data_ptr<uint8_t>(), P, Q, S, ra, g.data_ptr<float>(),
                                      x.data_ptr<float>(), B, gV.data_ptr<float>(), b * 128); break;
          default: tiled_value_grad<4>(planes.data_ptr<uint8_t>(), P, Q, S, ra, g.data_ptr<float>(),
                                       x.data_ptr<float>(), B, gV.data_ptr<float>(), b * 128); break;
        }
      }
    });
  }
#endif
  return {gx, gV};
}

// Each parent row's columns sorted by child (stable: ascending within a child) and where each
// child's columns start: what the tiled kernels read. A counting sort over the bit planes, one pass
// per row, so the layer keeps no order between calls (2 bytes an entry) and builds it per call.
template <typename IDX>
void order_rows(const uint8_t* planes, int64_t NB, int64_t P, int64_t Q, int64_t S, int64_t ra, IDX* order,
                int32_t* starts) {
  at::parallel_for(0, P, 64, [&](int64_t i0, int64_t i1) {
    std::vector<int32_t> next(ra);
    std::vector<uint8_t> child(Q);
    for (int64_t i = i0; i < i1; ++i) {
      int32_t* st = starts + i * (ra + 1);
      std::fill(st, st + ra + 1, 0);
      for (int64_t j = 0; j < Q; ++j) {
        int c = 0;
        for (int64_t q = 0; q < NB; ++q) c |= ((planes[(q * P + i) * S + j / 8] >> (j % 8)) & 1) << q;
        child[j] = static_cast<uint8_t>(c);
        ++st[c + 1];
      }
      for (int64_t k = 0; k < ra; ++k) st[k + 1] += st[k];
      for (int64_t k = 0; k < ra; ++k) next[k] = st[k];
      for (int64_t j = 0; j < Q; ++j) order[i * Q + next[child[j]]++] = static_cast<IDX>(j);
    }
  });
}

std::vector<torch::Tensor> column_order(torch::Tensor planes, int64_t Q, int64_t ra) {
  TORCH_CHECK(planes.dim() == 3 && planes.scalar_type() == torch::kByte && planes.is_contiguous() &&
                  planes.size(2) * 8 >= Q, "planes must be contiguous uint8 (bits, rows, bytes >= cols / 8)");
  TORCH_CHECK(ra >= 1 && ra <= 16 && (1 << planes.size(0)) >= ra, "planes must hold the children's ids");
  const int64_t NB = planes.size(0), P = planes.size(1), S = planes.size(2);
  auto order = torch::empty({P, Q}, planes.options().dtype(Q < 32768 ? torch::kShort : torch::kInt));
  auto starts = torch::empty({P, ra + 1}, planes.options().dtype(torch::kInt));
  if (Q < 32768) order_rows<int16_t>(planes.data_ptr<uint8_t>(), NB, P, Q, S, ra, order.data_ptr<int16_t>(),
                                     starts.data_ptr<int32_t>());
  else order_rows<int32_t>(planes.data_ptr<uint8_t>(), NB, P, Q, S, ra, order.data_ptr<int32_t>(),
                           starts.data_ptr<int32_t>());
  return {order, starts};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("available", &available, "whether this CPU runs the kernels (AVX-512)");
  m.def("children_supported", &children_supported, "the children per parent the kernels are built for");
  m.def("forward", &forward, "y = the parent-order product (batch, children * out)");
  m.def("backward", &backward, "(grad_input, grad_values) of the parent-order product");
  m.def("forward_tiled", &forward_tiled, "the product for large batches, from each row's columns sorted by child");
  m.def("backward_tiled", &backward_tiled, "(grad_input, grad_values) for large batches");
  m.def("column_order", &column_order, "(order, starts): each row's columns sorted by child, from the bit planes");
}
