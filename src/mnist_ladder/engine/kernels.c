/* CPU kernels torch lacks (fused.py says why): the BatchNorm block's passes over a
   channels-last map, a 2x2 max-pool and the augmentation of an epoch's images (the last two at
   the end of the file).

   The map is `rows` rows of `T` values (T = channels * k: k copies of the channel vector), fp32
   or bf16. a = ReLU(z) if pre_relu else z; v = scale * a + shift with scale and shift tiled to T
   (BatchNorm, its affine and the dropout's 1/(1-p) in one); y = ReLU(v) if post_relu else v;
   y = 0 where the dropout mask (one bit an element) is set. Each direction is one call and
   one parallel region: per-column sums in double, a thread's rows at a time, folded into the
   channels by one thread in a fixed order (results do not depend on scheduling), then the
   elementwise pass. The per-channel arithmetic is here too: in Python it was dozens of tiny
   tensor operations a block, which cost more than the passes. Built by fused.py with the
   system C compiler and loaded with ctypes; OpenMP resolves to the runtime torch already
   loaded, so both share one thread pool. */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_T 128

/* One block's shape and settings (fused.py's `_Block` mirrors it). */
typedef struct {
    int64_t rows;  /* the map is rows x T values */
    int32_t T, C;  /* T = C * k */
    int32_t bf16, pre_relu, post_relu, train, threads;
    double keep;   /* the dropout's 1 / (1 - p), or 1 */
    double eps;
} Block;

static inline float load(const void *p, int64_t i, int bf16) {
    if (bf16) {
        uint32_t u = (uint32_t)((const uint16_t *)p)[i] << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    return ((const float *)p)[i];
}

/* float -> bf16 rounds to nearest even, as torch does (NaN aside: none reach here finite). */
static inline void store(void *p, int64_t i, float f, int bf16) {
    if (bf16) {
        uint32_t u;
        memcpy(&u, &f, 4);
        u += 0x7FFFu + ((u >> 16) & 1u);
        ((uint16_t *)p)[i] = (uint16_t)(u >> 16);
    } else {
        ((float *)p)[i] = f;
    }
}

/* One rounding, the same wherever it is computed: the backward's "was y > 0" must agree with
   the forward bit for bit. */
static inline float affine(float s, float a, float b) {
#ifdef __FMA__
    return fmaf(s, a, b);
#else
    return s * a + b;
#endif
}

/* The mask bits of elements base .. base+T-1, one byte each: loops over a row then read
   bytes, which vectorize, where bits at a moving offset do not. Eight bits spread to eight
   bytes with one multiply (bit 7 apart: the multiply carries it out of its byte). */
static inline void unpack_row(const uint8_t *mask, int64_t base, int T, uint8_t *cut) {
    if (mask == NULL) {
        memset(cut, 0, T);
    } else if (((base | T) & 7) == 0) {
        for (int j = 0; j < T; j += 8) {
            uint8_t b = mask[(base + j) >> 3];
            uint64_t w = (((uint64_t)(b & 0x7F) * 0x0002040810204081ULL) & 0x0101010101010101ULL)
                         | ((uint64_t)(b & 0x80) << 49);
            memcpy(cut + j, &w, 8);
        }
    } else {
        for (int j = 0; j < T; j++) cut[j] = (mask[(base + j) >> 3] >> ((base + j) & 7)) & 1;
    }
}

static inline void thread_rows(int64_t rows, int64_t *r0, int64_t *r1) {
    int t = omp_get_thread_num(), nt = omp_get_num_threads();
    *r0 = rows * t / nt;
    *r1 = rows * (t + 1) / nt;
}

static inline void stats_rows(const void *z, int bf16, int64_t r0, int64_t r1, int T, int pre_relu,
                              double *s, double *q) {
    for (int64_t r = r0; r < r1; r++)
        for (int j = 0; j < T; j++) {
            float a = load(z, r * T + j, bf16);
            if (pre_relu) a = a > 0.f ? a : 0.f;
            s[j] += a;
            q[j] += (double)a * a;
        }
}

static inline void forward_rows(const void *z, void *y, int bf16, int64_t r0, int64_t r1, int T,
                                int pre_relu, int post_relu, const float *scale,
                                const float *shift, const uint8_t *mask) {
    uint8_t cut[MAX_T];
    for (int64_t r = r0; r < r1; r++) {
        unpack_row(mask, r * T, T, cut);
        for (int j = 0; j < T; j++) {
            int64_t i = r * T + j;
            float a = load(z, i, bf16);
            if (pre_relu) a = a > 0.f ? a : 0.f;
            float v = affine(scale[j], a, shift[j]);
            if (post_relu) v = v > 0.f ? v : 0.f;
            store(y, i, cut[j] ? 0.f : v, bf16);
        }
    }
}

/* The gradient reaching BatchNorm's (scaled) output: dy where y was kept, else 0. Written
   without branches so that the loops calling it vectorize. */
static inline float kept_grad(const void *dy, int64_t i, int bf16, float a, int post_relu,
                              float scale, float shift, uint8_t dropped) {
    float g = load(dy, i, bf16);
    int cut = (post_relu & !(affine(scale, a, shift) > 0.f)) | dropped;
    return cut ? 0.f : g;
}

static inline void grad_sum_rows(const void *dy, const void *z, int bf16, int64_t r0, int64_t r1,
                                 int T, int pre_relu, int post_relu, const float *scale,
                                 const float *shift, const uint8_t *mask, double *s, double *q) {
    uint8_t cut[MAX_T];
    for (int64_t r = r0; r < r1; r++) {
        unpack_row(mask, r * T, T, cut);
        for (int j = 0; j < T; j++) {
            int64_t i = r * T + j;
            float a = load(z, i, bf16);
            if (pre_relu) a = a > 0.f ? a : 0.f;
            float g = kept_grad(dy, i, bf16, a, post_relu, scale[j], shift[j], cut[j]);
            s[j] += g;
            q[j] += (double)g * a;
        }
    }
}

static inline void grad_input_rows(const void *dy, const void *z, void *dz, int bf16, int64_t r0,
                                   int64_t r1, int T, int pre_relu, int post_relu,
                                   const float *scale, const float *shift, const uint8_t *mask,
                                   const float *coef_g, const float *coef_a, const float *constant) {
    uint8_t cut[MAX_T];
    for (int64_t r = r0; r < r1; r++) {
        unpack_row(mask, r * T, T, cut);
        for (int j = 0; j < T; j++) {
            int64_t i = r * T + j;
            float zi = load(z, i, bf16);
            int below = pre_relu & !(zi > 0.f);
            float a = below ? 0.f : zi;
            float g = kept_grad(dy, i, bf16, a, post_relu, scale[j], shift[j], cut[j]);
            float d = coef_g[j] * g + coef_a[j] * a + constant[j];
            store(dz, i, below ? 0.f : d, bf16);
        }
    }
}

/* Per-channel sums of the threads' [2][T] partial column sums, in a fixed order. */
static void fold(const Block *b, const double *partial, double *first, double *second) {
    for (int c = 0; c < b->C; c++) first[c] = second[c] = 0;
    for (int t = 0; t < b->threads; t++)
        for (int j = 0; j < b->T; j++) {
            first[j % b->C] += partial[(int64_t)t * 2 * b->T + j];
            second[j % b->C] += partial[(int64_t)t * 2 * b->T + b->T + j];
        }
}

static void keep_partial(const Block *b, double *partial, const double *s, const double *q) {
    double *mine = partial + (int64_t)omp_get_thread_num() * 2 * b->T;
    memcpy(mine, s, b->T * sizeof(double));
    memcpy(mine + b->T, q, b->T * sizeof(double));
}

/* y from z. Training: the batch's statistics; sets the dropout mask from its hits (repeats
   are harmless), writes the tiled scale and shift [2][T] and the channels' mean and 1/std
   [2][C] for the backward, and moves the running statistics as torch's BatchNorm does.
   Eval: the running statistics, no mask, nothing kept. */
void nb_forward(const Block *b, const void *z, void *y, uint8_t *mask, const int64_t *hits,
                int64_t n_hits, const float *weight, const float *bias, float *running_mean,
                float *running_var, double momentum, float *scale_shift, double *moments) {
    int64_t count = b->rows * b->T / b->C;
    double *partial = calloc((size_t)b->threads * 2 * b->T, sizeof(double));
    if (b->train) {
        memset(mask, 0, (size_t)((b->rows * b->T + 7) / 8));
        for (int64_t i = 0; i < n_hits; i++) mask[hits[i] >> 3] |= (uint8_t)(1u << (hits[i] & 7));
    } else {
        mask = NULL;
    }
#pragma omp parallel num_threads(b->threads)
    {
        int64_t r0, r1;
        thread_rows(b->rows, &r0, &r1);
        if (b->train) {
            double s[MAX_T] = {0}, q[MAX_T] = {0};
            if (b->bf16) stats_rows(z, 1, r0, r1, b->T, b->pre_relu, s, q);
            else stats_rows(z, 0, r0, r1, b->T, b->pre_relu, s, q);
            keep_partial(b, partial, s, q);
        }
#pragma omp barrier
#pragma omp single
        {
            double total[MAX_T], squares[MAX_T];
            fold(b, partial, total, squares);
            for (int c = 0; c < b->C; c++) {
                double mean = b->train ? total[c] / count : running_mean[c];
                double var = b->train ? squares[c] / count - mean * mean : running_var[c];
                var = var > 0 ? var : 0;
                double invstd = 1 / sqrt(var + b->eps);
                for (int j = c; j < b->T; j += b->C) {
                    scale_shift[j] = (float)(weight[c] * invstd * b->keep);
                    scale_shift[b->T + j] = (float)((bias[c] - weight[c] * mean * invstd) * b->keep);
                }
                if (b->train) {
                    moments[c] = mean;
                    moments[b->C + c] = invstd;
                    double unbiased = count > 1 ? var * count / (count - 1) : var;
                    running_mean[c] = (float)((1 - momentum) * running_mean[c] + momentum * mean);
                    running_var[c] = (float)((1 - momentum) * running_var[c] + momentum * unbiased);
                }
            }
        }
        if (b->bf16)
            forward_rows(z, y, 1, r0, r1, b->T, b->pre_relu, b->post_relu, scale_shift,
                         scale_shift + b->T, mask);
        else
            forward_rows(z, y, 0, r0, r1, b->T, b->pre_relu, b->post_relu, scale_shift,
                         scale_shift + b->T, mask);
    }
    free(partial);
}

/* dz, and the weight and bias gradients, from dy and what the forward kept. */
void nb_backward(const Block *b, const void *dy, const void *z, void *dz, const uint8_t *mask,
                 const float *scale_shift, const double *moments, const float *weight,
                 float *dweight, float *dbias) {
    int64_t count = b->rows * b->T / b->C;
    double *partial = calloc((size_t)b->threads * 2 * b->T, sizeof(double));
    float coefs[3 * MAX_T];
    const float *scale = scale_shift, *shift = scale_shift + b->T;
#pragma omp parallel num_threads(b->threads)
    {
        int64_t r0, r1;
        thread_rows(b->rows, &r0, &r1);
        double s[MAX_T] = {0}, q[MAX_T] = {0};
        if (b->bf16)
            grad_sum_rows(dy, z, 1, r0, r1, b->T, b->pre_relu, b->post_relu, scale, shift, mask, s, q);
        else
            grad_sum_rows(dy, z, 0, r0, r1, b->T, b->pre_relu, b->post_relu, scale, shift, mask, s, q);
        keep_partial(b, partial, s, q);
#pragma omp barrier
#pragma omp single
        {
            /* g: the gradient at the kept outputs; keep * g is the gradient at BatchNorm's
               output. Its input gradient, expanded: da = coef_g g + coef_a a + constant. */
            double sum_g[MAX_T], sum_ga[MAX_T];
            fold(b, partial, sum_g, sum_ga);
            for (int c = 0; c < b->C; c++) {
                double mean = moments[c], invstd = moments[b->C + c], w = weight[c];
                double dbeta = b->keep * sum_g[c];
                double dgamma = b->keep * invstd * (sum_ga[c] - mean * sum_g[c]);
                double coef_a = -w * invstd * invstd * dgamma / count;
                double constant = -w * invstd * dbeta / count - coef_a * mean;
                dweight[c] = (float)dgamma;
                dbias[c] = (float)dbeta;
                for (int j = c; j < b->T; j += b->C) {
                    coefs[j] = (float)(w * invstd * b->keep);
                    coefs[b->T + j] = (float)coef_a;
                    coefs[2 * b->T + j] = (float)constant;
                }
            }
        }
        if (b->bf16)
            grad_input_rows(dy, z, dz, 1, r0, r1, b->T, b->pre_relu, b->post_relu, scale, shift,
                            mask, coefs, coefs + b->T, coefs + 2 * b->T);
        else
            grad_input_rows(dy, z, dz, 0, r0, r1, b->T, b->pre_relu, b->post_relu, scale, shift,
                            mask, coefs, coefs + b->T, coefs + 2 * b->T);
    }
    free(partial);
}

/* ------------------------------------------------------------------- 2x2 max-pool, stride 2 */

/* torch's 2x2 max-pool, channels-last: the first maximum in row-major window order wins ties,
   a NaN wins over any number. Keeps the winner as one byte (0-3) where torch keeps an int64
   index, and its backward writes every input gradient once where torch zero-fills them all
   and then scatters: the two were a tenth of a Step 6 training step. Values are moved as bits
   (2 or 4 bytes), compared as floats. */
/* One output row from its two input rows. Functions of restrict parameters, one per element
   type, so that the compiler knows the rows do not overlap and vectorizes over channels. */
#define POOL_ROW(NAME, T, TO_FLOAT)                                                             \
    static inline void NAME(const T *restrict top, const T *restrict bottom, T *restrict y,     \
                            uint8_t *restrict k, int64_t wo, int64_t C) {                       \
        for (int64_t ow = 0; ow < wo; ow++)                                                     \
            for (int64_t c = 0; c < C; c++) {                                                   \
                int64_t left = 2 * ow * C + c, right = left + C;                                \
                T best = top[left];                                                             \
                float fb = TO_FLOAT(best);                                                      \
                uint8_t win = 0;                                                                \
                float f1 = TO_FLOAT(top[right]), f2 = TO_FLOAT(bottom[left]),                   \
                      f3 = TO_FLOAT(bottom[right]);                                             \
                int t1 = f1 > fb || isnan(f1);                                                  \
                best = t1 ? top[right] : best, fb = t1 ? f1 : fb, win = t1 ? 1 : win;           \
                int t2 = f2 > fb || isnan(f2);                                                  \
                best = t2 ? bottom[left] : best, fb = t2 ? f2 : fb, win = t2 ? 2 : win;         \
                int t3 = f3 > fb || isnan(f3);                                                  \
                best = t3 ? bottom[right] : best, win = t3 ? 3 : win;                           \
                y[ow * C + c] = best;                                                           \
                k[ow * C + c] = win;                                                            \
            }                                                                                   \
    }

/* The channel loops are short (C = 8-32) and a loop of unknown length that short runs as
   scalar code after the vectorizer's alignment peeling; called with C a constant instead, each
   is a few whole vectors. `WITH_C(call)` runs `call` with C one of the ladder's widths. */
#define WITH_C(call)                                                                            \
    switch (C) {                                                                                \
    case 8: { const int64_t C = 8; call; } break;                                               \
    case 10: { const int64_t C = 10; call; } break;                                             \
    case 12: { const int64_t C = 12; call; } break;                                             \
    case 16: { const int64_t C = 16; call; } break;                                             \
    case 20: { const int64_t C = 20; call; } break;                                             \
    case 24: { const int64_t C = 24; call; } break;                                             \
    case 32: { const int64_t C = 32; call; } break;                                             \
    default: call;                                                                              \
    }

static inline float bits_to_float(uint16_t u) { return load(&u, 0, 1); }
static inline float as_float(float f) { return f; }
POOL_ROW(pool_row_bf16, uint16_t, bits_to_float)
POOL_ROW(pool_row_f32, float, as_float)

/* out [n, h/2, w/2, C] and code (the winners) from x [n, h, w, C]; elem_bytes 2 (bf16) or 4. */
void mp_forward(const void *x, void *out, uint8_t *code, int64_t n_images, int64_t h, int64_t w,
                int64_t C, int elem_bytes, int threads) {
    int64_t ho = h / 2, wo = w / 2;
#pragma omp parallel num_threads(threads)
    {
        int64_t o0, o1;
        thread_rows(n_images * ho, &o0, &o1);
        for (int64_t o = o0; o < o1; o++) {
            int64_t top = ((o / ho) * h + 2 * (o % ho)) * w * C; /* input row 2 * oh */
            if (elem_bytes == 2)
                WITH_C(pool_row_bf16((const uint16_t *)x + top, (const uint16_t *)x + top + w * C,
                                     (uint16_t *)out + o * wo * C, code + o * wo * C, wo, C))
            else
                WITH_C(pool_row_f32((const float *)x + top, (const float *)x + top + w * C,
                                    (float *)out + o * wo * C, code + o * wo * C, wo, C))
        }
    }
}

/* Two input rows' gradients from one pooled row: each window's gradient to its winner. */
#define UNPOOL_ROW(NAME, T)                                                                     \
    static inline void NAME(const T *restrict g, const uint8_t *restrict k, T *restrict dx,     \
                            int64_t wo, int64_t C, uint8_t first) {                             \
        for (int64_t ow = 0; ow < wo; ow++)                                                     \
            for (int64_t c = 0; c < C; c++) {                                                   \
                T gc = g[ow * C + c];                                                           \
                uint8_t kc = k[ow * C + c];                                                     \
                dx[2 * ow * C + c] = kc == first ? gc : 0;                                      \
                dx[(2 * ow + 1) * C + c] = kc == first + 1 ? gc : 0;                            \
            }                                                                                   \
    }

UNPOOL_ROW(unpool_row_16, uint16_t)
UNPOOL_ROW(unpool_row_32, uint32_t)

/* grad_in [n, h, w, C] from grad_out [n, h/2, w/2, C]: each window's gradient to its winner,
   0 elsewhere (and in a row or column no window covers). Zero bits are 0.0 in both
   precisions, so values move as bits. */
void mp_backward(const void *grad_out, const uint8_t *code, void *grad_in, int64_t n_images,
                 int64_t h, int64_t w, int64_t C, int elem_bytes, int threads) {
    int64_t ho = h / 2, wo = w / 2;
#pragma omp parallel num_threads(threads)
    {
        int64_t r0, r1;
        thread_rows(n_images * h, &r0, &r1);
        for (int64_t r = r0; r < r1; r++) {
            int64_t n = r / h, ih = r % h, pooled = (n * ho + ih / 2) * wo * C;
            char *dx = (char *)grad_in + r * w * C * elem_bytes;
            if (ih >= 2 * ho) {
                memset(dx, 0, w * C * elem_bytes);
                continue;
            }
            uint8_t first = (uint8_t)(2 * (ih & 1));
            if (elem_bytes == 2)
                WITH_C(unpool_row_16((const uint16_t *)grad_out + pooled, code + pooled,
                                     (uint16_t *)dx, wo, C, first))
            else
                WITH_C(unpool_row_32((const uint32_t *)grad_out + pooled, code + pooled,
                                     (uint32_t *)dx, wo, C, first))
            memset(dx + 2 * wo * C * elem_bytes, 0, (w - 2 * wo) * C * elem_bytes);
        }
    }
}

/* ------------------------------------------------------------ the seed's augmentation

   augment.py's affine warp, colour jitter and normalization, one image at a time from the
   uint8 data set straight into the epoch's buffer: torch's version makes a pass over the
   whole chunk for every one of its dozen steps (index, to float, the sampling grid,
   grid_sample, brightness and contrast each computed for both orders, normalize), and on
   these 784-pixel images each pass costs what it moves through memory. The arithmetic is
   torch's, step by step: the grid as `sampling_grid` builds it, grid_sample's bilinear
   weights with zeros outside (align_corners=False), ColorJitter's clamps in the image's
   own order; only the contrast's image mean is summed in another order (in double). */
void aug_images(const uint8_t *images, const int64_t *index, int64_t n, int64_t h, int64_t w,
                const float *theta, const float *bright, const float *contrast,
                const uint8_t *bright_first, float mean, float std, float *out, int threads) {
    /* The image sits in a buffer with a border of 2 zeros: a tap's index, clamped to
       [-2, size], then always lands on the image or on zeros (taps outside it are zeros in
       grid_sample too), so the warp's loop has no branches and vectorizes. */
    const int64_t pw = w + 4, ph = h + 4;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        const uint8_t *src = images + index[i] * h * w;
        float *dst = out + i * h * w;
        float padded[ph * pw], xs[w];
        memset(padded, 0, sizeof(padded));
        for (int64_t r = 0; r < h; r++)
            for (int64_t c = 0; c < w; c++) padded[(r + 2) * pw + c + 2] = (float)src[r * w + c] / 255.0f;
        if (theta) {
            const float *t = theta + i * 6;
            for (int64_t c = 0; c < w; c++) xs[c] = (float)(c * 2 + 1) / (float)w - 1.0f;
            const float half_w = (float)w / 2.0f, half_h = (float)h / 2.0f;
            for (int64_t r = 0; r < h; r++) {
                const float ys = (float)(r * 2 + 1) / (float)h - 1.0f;
                float *row = dst + r * w;
#pragma omp simd
                for (int64_t c = 0; c < w; c++) {
                    float gx = t[0] * xs[c] + t[1] * ys + t[2];
                    float gy = t[3] * xs[c] + t[4] * ys + t[5];
                    float x = (gx + 1.0f) * half_w - 0.5f;
                    float y = (gy + 1.0f) * half_h - 0.5f;
                    float xw = floorf(x), yn = floorf(y);
                    float we = x - xw, ea = (xw + 1.0f) - x, no = y - yn, so = (yn + 1.0f) - y;
                    float xc = xw < -2.0f ? -2.0f : (xw > (float)w ? (float)w : xw);
                    float yc = yn < -2.0f ? -2.0f : (yn > (float)h ? (float)h : yn);
                    int32_t k = ((int32_t)yc + 2) * (int32_t)pw + (int32_t)xc + 2;
                    row[c] = padded[k] * (so * ea) + padded[k + 1] * (so * we) +
                             padded[k + pw] * (no * ea) + padded[k + pw + 1] * (no * we);
                }
            }
        } else {
            for (int64_t r = 0; r < h; r++) memcpy(dst + r * w, padded + (r + 2) * pw + 2, sizeof(float) * w);
        }
        if (bright) {
            const float b = bright[i], cf = contrast[i], one_minus_c = 1.0f - cf;
            for (int step = 0; step < 2; step++) {
                if ((step == 0) == (bright_first[i] != 0)) {
#pragma omp simd
                    for (int64_t k = 0; k < h * w; k++) {
                        float v = dst[k] * b;
                        dst[k] = v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);
                    }
                } else {
                    double sum = 0;
#pragma omp simd reduction(+ : sum)
                    for (int64_t k = 0; k < h * w; k++) sum += dst[k];
                    const float m = (float)(sum / (double)(h * w)) * one_minus_c;
#pragma omp simd
                    for (int64_t k = 0; k < h * w; k++) {
                        float v = dst[k] * cf + m;
                        dst[k] = v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);
                    }
                }
            }
        }
#pragma omp simd
        for (int64_t k = 0; k < h * w; k++) dst[k] = (dst[k] - mean) / std;
    }
}
