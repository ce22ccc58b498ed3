// Fused preprocessing kernels: raw stored DICOM values in, model-grid tensor out.
//
// Each kernel reads stored values (uint8 / int16 / uint16), rescales them to physical
// units, resamples to the model grid (bilinear per slice -> NCHW, or trilinear -> NCDHW,
// torch align_corners=False), windows, normalises, pads bottom/right, and writes fp32 or
// fp16 straight into the caller's output buffer. One thread per output element in a
// grid-stride loop; the arithmetic lives in preprocess_math.cuh, shared with the host
// test harness.
//
// Entry points (extern "C", so a driver-API loader finds them by name):
//   ss_preprocess2d_<in>_<out>(src, dst, slices, in_h, in_w, out_h, out_w, pad_h, pad_w,
//                              slope, intercept, low, high, offset, scale, pad_value)
//   ss_preprocess3d_<in>_<out>(src, dst, in_d, in_h, in_w, out_d, out_h, out_w,
//                              pad_d, pad_h, pad_w,
//                              slope, intercept, low, high, offset, scale, pad_value)
// with <in> in {u8, i16, u16} and <out> in {f32, f16}.
#include <cuda_fp16.h>
#include <stdint.h>

#include "preprocess_math.cuh"

namespace {

__device__ __forceinline__ void store(float* dst, long long index, float value) { dst[index] = value; }

__device__ __forceinline__ void store(__half* dst, long long index, float value) {
    dst[index] = __float2half_rn(value);
}

__device__ __forceinline__ long long first_index() {
    return static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ long long grid_stride() {
    return static_cast<long long>(gridDim.x) * blockDim.x;
}

template <typename In, typename Out>
__device__ __forceinline__ void preprocess_2d(const In* __restrict__ src, Out* __restrict__ dst,
                                              const ss::Grid2d& grid, const ss::Intensity& params) {
    const long long total = ss::element_count(grid);
    for (long long i = first_index(); i < total; i += grid_stride()) {
        store(dst, i, ss::element_2d(src, grid, params, i));
    }
}

template <typename In, typename Out>
__device__ __forceinline__ void preprocess_3d(const In* __restrict__ src, Out* __restrict__ dst,
                                              const ss::Grid3d& grid, const ss::Intensity& params) {
    const long long total = ss::element_count(grid);
    for (long long i = first_index(); i < total; i += grid_stride()) {
        store(dst, i, ss::element_3d(src, grid, params, i));
    }
}

}  // namespace

#define SS_INTENSITY_PARAMS \
    float slope, float intercept, float low, float high, float offset, float scale, float pad_value
#define SS_INTENSITY {slope, intercept, low, high, offset, scale, pad_value}

#define SS_DEFINE_2D(IN_NAME, IN_TYPE, OUT_NAME, OUT_TYPE)                                              \
    extern "C" __global__ void ss_preprocess2d_##IN_NAME##_##OUT_NAME(                                   \
        const IN_TYPE* __restrict__ src, OUT_TYPE* __restrict__ dst, int slices, int in_h, int in_w,     \
        int out_h, int out_w, int pad_h, int pad_w, SS_INTENSITY_PARAMS) {                              \
        const ss::Grid2d grid = {slices, in_h, in_w, out_h, out_w, pad_h, pad_w};                        \
        const ss::Intensity params = SS_INTENSITY;                                                       \
        preprocess_2d(src, dst, grid, params);                                                           \
    }

#define SS_DEFINE_3D(IN_NAME, IN_TYPE, OUT_NAME, OUT_TYPE)                                              \
    extern "C" __global__ void ss_preprocess3d_##IN_NAME##_##OUT_NAME(                                   \
        const IN_TYPE* __restrict__ src, OUT_TYPE* __restrict__ dst, int in_d, int in_h, int in_w,       \
        int out_d, int out_h, int out_w, int pad_d, int pad_h, int pad_w, SS_INTENSITY_PARAMS) {         \
        const ss::Grid3d grid = {in_d, in_h, in_w, out_d, out_h, out_w, pad_d, pad_h, pad_w};           \
        const ss::Intensity params = SS_INTENSITY;                                                       \
        preprocess_3d(src, dst, grid, params);                                                           \
    }

#define SS_DEFINE_ALL(IN_NAME, IN_TYPE)          \
    SS_DEFINE_2D(IN_NAME, IN_TYPE, f32, float)   \
    SS_DEFINE_2D(IN_NAME, IN_TYPE, f16, __half)  \
    SS_DEFINE_3D(IN_NAME, IN_TYPE, f32, float)   \
    SS_DEFINE_3D(IN_NAME, IN_TYPE, f16, __half)

SS_DEFINE_ALL(u8, uint8_t)
SS_DEFINE_ALL(i16, int16_t)
SS_DEFINE_ALL(u16, uint16_t)
