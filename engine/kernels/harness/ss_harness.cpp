// Host build of the preprocessing arithmetic (preprocess_math.cuh) as a shared library.
//
// Python loads it with ctypes and compares its output with the torch reference, so the
// per-element math the CUDA kernels run is checked on machines without a GPU. Each entry
// point runs the same element functions as preprocess.cu over every output element,
// writing fp32 (fp16 conversion is device-only).
#include <stdint.h>

#include "../preprocess_math.cuh"

namespace {

template <typename In>
void run_2d(const In* src, float* dst, const ss::Grid2d& grid, const ss::Intensity& params) {
    const long long total = ss::element_count(grid);
    for (long long i = 0; i < total; ++i) {
        dst[i] = ss::element_2d(src, grid, params, i);
    }
}

template <typename In>
void run_3d(const In* src, float* dst, const ss::Grid3d& grid, const ss::Intensity& params) {
    const long long total = ss::element_count(grid);
    for (long long i = 0; i < total; ++i) {
        dst[i] = ss::element_3d(src, grid, params, i);
    }
}

}  // namespace

#define SS_HOST_INTENSITY_PARAMS \
    float slope, float intercept, float low, float high, float offset, float scale, float pad_value

#define SS_HOST_DEFINE(IN_NAME, IN_TYPE)                                                              \
    extern "C" void ss_host_preprocess2d_##IN_NAME(const IN_TYPE* src, float* dst, int slices,        \
                                                   int in_h, int in_w, int out_h, int out_w,          \
                                                   int pad_h, int pad_w, SS_HOST_INTENSITY_PARAMS) {  \
        const ss::Grid2d grid = {slices, in_h, in_w, out_h, out_w, pad_h, pad_w};                      \
        const ss::Intensity params = {slope, intercept, low, high, offset, scale, pad_value};          \
        run_2d(src, dst, grid, params);                                                                \
    }                                                                                                  \
    extern "C" void ss_host_preprocess3d_##IN_NAME(const IN_TYPE* src, float* dst, int in_d,          \
                                                   int in_h, int in_w, int out_d, int out_h,          \
                                                   int out_w, int pad_d, int pad_h, int pad_w,        \
                                                   SS_HOST_INTENSITY_PARAMS) {                        \
        const ss::Grid3d grid = {in_d, in_h, in_w, out_d, out_h, out_w, pad_d, pad_h, pad_w};         \
        const ss::Intensity params = {slope, intercept, low, high, offset, scale, pad_value};          \
        run_3d(src, dst, grid, params);                                                                \
    }

SS_HOST_DEFINE(u8, uint8_t)
SS_HOST_DEFINE(i16, int16_t)
SS_HOST_DEFINE(u16, uint16_t)
