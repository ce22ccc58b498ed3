// Per-element preprocessing arithmetic shared by the CUDA kernels (preprocess.cu)
// and the host test harness (harness/ss_harness.cpp).
//
// One output element of the model grid is computed as
//     hu      = stored * slope + intercept          (per neighbouring stored value)
//     sampled = bilinear / trilinear blend of hu    (torch align_corners=False)
//     out     = (clamp(sampled, low, high) - offset) * scale
// With offset = low and scale = 1 / (high - low) this is engine.kernels.cpu.window_normalise
// (window onto [0, 1]); with offset = mean and scale = 1 / std it is a z-score of the
// clipped value. Elements beyond the resampled extent (bottom/right padding up to the
// padded grid) take pad_value. All arithmetic is fp32.
//
// The header compiles with nvcc (functions are __host__ __device__) and with plain g++.
#ifndef SCANSTREAM_PREPROCESS_MATH_CUH
#define SCANSTREAM_PREPROCESS_MATH_CUH

#ifdef __CUDACC__
#define SS_HD __host__ __device__ __forceinline__
#else
#define SS_HD inline
#endif

#include <math.h>
#include <stdint.h>

namespace ss {

// Intensity parameters: rescale, window, normalise, and the value of padding.
struct Intensity {
    float slope;
    float intercept;
    float low;
    float high;
    float offset;
    float scale;
    float pad_value;
};

// One axis of a linear resample: the two source indices and their weights.
struct LinearTap {
    int i0;
    int i1;
    float w0;
    float w1;
};

// Stored value to physical units (HU for CT): stored * slope + intercept.
template <typename T>
SS_HD float rescale(T stored, float slope, float intercept) {
    return static_cast<float>(stored) * slope + intercept;
}

// Clip to [low, high], then (x - offset) * scale.
SS_HD float window_normalise(float value, float low, float high, float offset, float scale) {
    const float clipped = value < low ? low : (value > high ? high : value);
    return (clipped - offset) * scale;
}

// Source-per-destination ratio of a resampled axis, as torch computes it from sizes.
SS_HD float axis_ratio(int in_size, int out_size) {
    return static_cast<float>(in_size) / static_cast<float>(out_size);
}

// Source taps of output index `out_index` along one axis (torch linear, align_corners=False):
// src = ratio * (dst + 0.5) - 0.5, clamped at 0; the upper tap is clamped to the last index.
// The multiply-add is an explicit fmaf: nvcc contracts it on the device and torch's
// vectorised CPU kernels do too, so host, device and torch agree on the source coordinate.
SS_HD LinearTap linear_tap(int out_index, int in_size, int out_size) {
    LinearTap tap;
    if (in_size == out_size) {
        tap.i0 = out_index;
        tap.i1 = out_index;
        tap.w0 = 1.0f;
        tap.w1 = 0.0f;
        return tap;
    }
    float src = fmaf(axis_ratio(in_size, out_size), static_cast<float>(out_index) + 0.5f, -0.5f);
    if (src < 0.0f) {
        src = 0.0f;
    }
    int i0 = static_cast<int>(src);  // src >= 0, so truncation is floor
    if (i0 > in_size - 1) {
        i0 = in_size - 1;
    }
    float w1 = src - static_cast<float>(i0);
    w1 = w1 < 0.0f ? 0.0f : (w1 > 1.0f ? 1.0f : w1);
    tap.i0 = i0;
    tap.i1 = i0 < in_size - 1 ? i0 + 1 : i0;
    tap.w0 = 1.0f - w1;
    tap.w1 = w1;
    return tap;
}

// Rescaled value of one stored element.
template <typename T>
SS_HD float load_hu(const T* src, long long index, const Intensity& p) {
    return rescale(src[index], p.slope, p.intercept);
}

// Bilinear sample of one (rows, cols) slice starting at `slice` at the taps ty, tx.
template <typename T>
SS_HD float bilinear(const T* slice, int cols, const LinearTap& ty, const LinearTap& tx, const Intensity& p) {
    const long long r0 = static_cast<long long>(ty.i0) * cols;
    const long long r1 = static_cast<long long>(ty.i1) * cols;
    const float top = tx.w0 * load_hu(slice, r0 + tx.i0, p) + tx.w1 * load_hu(slice, r0 + tx.i1, p);
    const float bottom = tx.w0 * load_hu(slice, r1 + tx.i0, p) + tx.w1 * load_hu(slice, r1 + tx.i1, p);
    return ty.w0 * top + ty.w1 * bottom;
}

// Trilinear sample of a (depth, rows, cols) volume at the taps tz, ty, tx.
template <typename T>
SS_HD float trilinear(const T* volume, int rows, int cols, const LinearTap& tz, const LinearTap& ty,
                      const LinearTap& tx, const Intensity& p) {
    const long long plane = static_cast<long long>(rows) * cols;
    const float near_plane = bilinear(volume + tz.i0 * plane, cols, ty, tx, p);
    const float far_plane = bilinear(volume + tz.i1 * plane, cols, ty, tx, p);
    return tz.w0 * near_plane + tz.w1 * far_plane;
}

// Shape of a 2D job: `slices` slices of (in_h, in_w) resampled to (out_h, out_w),
// written into an NCHW buffer (slices, 1, pad_h, pad_w) with pad_h >= out_h, pad_w >= out_w.
struct Grid2d {
    int slices;
    int in_h;
    int in_w;
    int out_h;
    int out_w;
    int pad_h;
    int pad_w;
};

// Shape of a 3D job: a (in_d, in_h, in_w) volume resampled to (out_d, out_h, out_w),
// written into an NCDHW buffer (1, 1, pad_d, pad_h, pad_w).
struct Grid3d {
    int in_d;
    int in_h;
    int in_w;
    int out_d;
    int out_h;
    int out_w;
    int pad_d;
    int pad_h;
    int pad_w;
};

// Number of output elements of a 2D job.
SS_HD long long element_count(const Grid2d& g) {
    return static_cast<long long>(g.slices) * g.pad_h * g.pad_w;
}

// Number of output elements of a 3D job.
SS_HD long long element_count(const Grid3d& g) {
    return static_cast<long long>(g.pad_d) * g.pad_h * g.pad_w;
}

// Output element `index` (linear NCHW, C = 1) of a 2D job.
template <typename T>
SS_HD float element_2d(const T* src, const Grid2d& g, const Intensity& p, long long index) {
    const int x = static_cast<int>(index % g.pad_w);
    const long long rest = index / g.pad_w;
    const int y = static_cast<int>(rest % g.pad_h);
    const long long s = rest / g.pad_h;
    if (x >= g.out_w || y >= g.out_h) {
        return p.pad_value;
    }
    const LinearTap ty = linear_tap(y, g.in_h, g.out_h);
    const LinearTap tx = linear_tap(x, g.in_w, g.out_w);
    const T* slice = src + s * static_cast<long long>(g.in_h) * g.in_w;
    const float hu = bilinear(slice, g.in_w, ty, tx, p);
    return window_normalise(hu, p.low, p.high, p.offset, p.scale);
}

// Output element `index` (linear NCDHW, N = C = 1) of a 3D job.
template <typename T>
SS_HD float element_3d(const T* src, const Grid3d& g, const Intensity& p, long long index) {
    const int x = static_cast<int>(index % g.pad_w);
    const long long rest = index / g.pad_w;
    const int y = static_cast<int>(rest % g.pad_h);
    const int z = static_cast<int>(rest / g.pad_h);
    if (x >= g.out_w || y >= g.out_h || z >= g.out_d) {
        return p.pad_value;
    }
    const LinearTap tz = linear_tap(z, g.in_d, g.out_d);
    const LinearTap ty = linear_tap(y, g.in_h, g.out_h);
    const LinearTap tx = linear_tap(x, g.in_w, g.out_w);
    const float hu = trilinear(src, g.in_h, g.in_w, tz, ty, tx, p);
    return window_normalise(hu, p.low, p.high, p.offset, p.scale);
}

}  // namespace ss

#endif  // SCANSTREAM_PREPROCESS_MATH_CUH
