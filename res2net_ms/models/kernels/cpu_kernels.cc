// 3x3 pools (padding 1, stride 1 or 2) for MindSpore ops.Custom (func_type "aot"): float32,
// NCHW, one thread (MindSpore's own thread pool keeps the cores busy around them).
// Each entry point follows MindSpore's AOT calling convention: params holds the inputs, then
// the outputs; shapes[i] describes params[i].
#include <algorithm>
#include <cfloat>
#include <cstdint>
#include <cstring>

namespace {

struct Plane {
  int64_t planes, h, w;
};

Plane plane_of(const int64_t *shape) { return {shape[0] * shape[1], shape[2], shape[3]}; }

// 3x3 pool window of output (oh, ow) with stride S and padding 1, clipped to the input.
template <int S>
inline void window(int64_t oh, int64_t ow, const Plane &in, int64_t *h0, int64_t *h1,
                   int64_t *w0, int64_t *w1) {
  *h0 = std::max<int64_t>(oh * S - 1, 0);
  *h1 = std::min<int64_t>(oh * S + 2, in.h);
  *w0 = std::max<int64_t>(ow * S - 1, 0);
  *w1 = std::min<int64_t>(ow * S + 2, in.w);
}

// Max pool (padding never wins) or average pool counting the padding (divisor 9).
template <bool MAX, int S>
int pool_forward(void **params, int64_t **shapes) {
  const float *x = static_cast<const float *>(params[0]);
  float *y = static_cast<float *>(params[1]);
  const Plane in = plane_of(shapes[0]), out = plane_of(shapes[1]);
  for (int64_t p = 0; p < in.planes; ++p) {
    const float *xp = x + p * in.h * in.w;
    float *yp = y + p * out.h * out.w;
    for (int64_t oh = 0; oh < out.h; ++oh) {
      for (int64_t ow = 0; ow < out.w; ++ow) {
        int64_t h0, h1, w0, w1;
        window<S>(oh, ow, in, &h0, &h1, &w0, &w1);
        float acc = MAX ? -FLT_MAX : 0.0f;
        for (int64_t h = h0; h < h1; ++h)
          for (int64_t w = w0; w < w1; ++w)
            acc = MAX ? std::max(acc, xp[h * in.w + w]) : acc + xp[h * in.w + w];
        yp[oh * out.w + ow] = MAX ? acc : acc * (1.0f / 9.0f);
      }
    }
  }
  return 0;
}

// Gradient of pool_forward: inputs x, dy; output dx. A max window sends its gradient to its
// first largest element (row-major), as MindSpore's and PyTorch's max pools do.
template <bool MAX, int S>
int pool_backward(void **params, int64_t **shapes) {
  const float *x = static_cast<const float *>(params[0]);
  const float *dy = static_cast<const float *>(params[1]);
  float *dx = static_cast<float *>(params[2]);
  const Plane in = plane_of(shapes[0]), out = plane_of(shapes[1]);
  for (int64_t p = 0; p < in.planes; ++p) {
    const float *xp = x + p * in.h * in.w;
    const float *dyp = dy + p * out.h * out.w;
    float *dxp = dx + p * in.h * in.w;
    std::memset(dxp, 0, sizeof(float) * in.h * in.w);
    for (int64_t oh = 0; oh < out.h; ++oh) {
      for (int64_t ow = 0; ow < out.w; ++ow) {
        int64_t h0, h1, w0, w1;
        window<S>(oh, ow, in, &h0, &h1, &w0, &w1);
        const float g = dyp[oh * out.w + ow];
        if (MAX) {
          int64_t best = h0 * in.w + w0;
          for (int64_t h = h0; h < h1; ++h)
            for (int64_t w = w0; w < w1; ++w)
              if (xp[h * in.w + w] > xp[best]) best = h * in.w + w;
          dxp[best] += g;
        } else {
          for (int64_t h = h0; h < h1; ++h)
            for (int64_t w = w0; w < w1; ++w) dxp[h * in.w + w] += g * (1.0f / 9.0f);
        }
      }
    }
  }
  return 0;
}

}  // namespace

#define POOL_ENTRY(name, fn)                                                                 \
  extern "C" int name(int, void **params, int *, int64_t **shapes, const char **, void *,   \
                      void *) {                                                              \
    return fn(params, shapes);                                                               \
  }

POOL_ENTRY(MaxPool3x3s2, (pool_forward<true, 2>))
POOL_ENTRY(MaxPool3x3s2Grad, (pool_backward<true, 2>))
POOL_ENTRY(AvgPool3x3s1, (pool_forward<false, 1>))
POOL_ENTRY(AvgPool3x3s1Grad, (pool_backward<false, 1>))
POOL_ENTRY(AvgPool3x3s2, (pool_forward<false, 2>))
POOL_ENTRY(AvgPool3x3s2Grad, (pool_backward<false, 2>))
