/* Exact proximal operator of lam * R for groups of 4 (EnumALM), solved per group.
 *
 * R(w) = sum over the 4 triples i<j<k of |wi wj wk|. On the sorted magnitudes
 * a0 >= a1 >= a2 >= a3 the candidates are (a0, a1, 0, 0), and coordinate minimisation on
 * the supports {0,1,2} and {0,1,2,3}, sweeping from the smallest entry up; each
 * update is exact: w_k <- max(a_k - lam * S_k, 0), S_k = sum of pairwise products of the
 * other entries. The candidate with the smallest 1/2||w - a||^2 + lam R(w) wins.
 *
 * Most groups need no search: bounds on every local minimum of a support (below) prove that
 * it cannot beat the best candidate so far, and the bounds give the searches that remain a
 * start close to their end (the middle of the bounds, where EnumALM starts from w = 0; the
 * point found is never worse, and sometimes a better local minimum). Most searches on
 * {0,1,2,3} that stop do so on the face w3 = 0, at a stationary point of {0,1,2}: the search
 * on {0,1,2} starts there when it lies inside that support's bounds. Groups are taken CHUNK
 * at a time (_prox24_solve.h): one pass sorts them and proves what it can in the input's own
 * precision, then the groups left sweep LANES side by side in double, in loops the compiler
 * vectorises, a lane taking the next group as soon as its own has ended; the rare search still
 * moving after POLISH_AFTER sweeps (near a fold, where sweeps crawl) finishes with Newton steps.
 * Plain C, no dependency: built once per CPU at first use and loaded through ctypes; the caller
 * splits the groups between threads (ctypes releases the GIL) and allocates the workspaces.
 *
 * The bounds. A local minimum w of a support S is stationary, w_i = a_i - lam e2(w without i)
 * for i in S, and its Hessian I + lam H (H_ij = sum of w_k, k in S, k != i, j) is PSD, so its
 * 2x2 minors give lam (w_k + w_l) <= 1 for every pair outside a pair of S (on S = {0,1,2}:
 * lam w_k <= 1). Starting from w <= min(a, 1/lam), the stationarity map, which reverses
 * order, turns upper bounds into lower bounds and back: a few rounds give [lo, hi] around
 * every local minimum, or an empty interval when there is none. Stationarity and Euler's
 * identity for the cubic R give the objective at such a point in closed form,
 *     f(w) = 1/2 ||a||^2 + sum_i (w_i^2 / 6 - 2/3 a_i w_i),
 * decreasing in each w_i below 2 a_i, so f(hi) bounds it from below. On {0,1,2} also
 *     f(w) = f2 - w2^2 (1 - lam^2 (w0^2 + w1^2)) / 2,   f2 = (a2^2 + a3^2) / 2,
 * and a 3-support global minimum must not gain from raising w3: a3 <= lam e2(w0, w1, w2).
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define LANES 64 /* one bit each in a 64-bit word */
#define CHUNK 2048 /* groups; the caller splits threads on multiples of it */
#define MAX_SWEEPS 1000
#define POLISH_AFTER 64 /* sweeps; slower searches switch to Newton steps */

/* Bit l set where flags[l] (0 or 1) is set, for l < LANES. */
static inline unsigned long long lane_bits(const unsigned char *flags) {
    unsigned long long bits = 0;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    for (int l = 0; l < LANES; l += 8) {  /* eight flags at a time: a multiply gathers them */
        unsigned long long eight;
        memcpy(&eight, flags + l, 8);
        bits |= ((eight * 0x0102040810204080ull) >> 56) << l;
    }
#else
    for (int l = 0; l < LANES; ++l) bits |= (unsigned long long)flags[l] << l;
#endif
    return bits;
}

static inline double pos(double x) { return x > 0.0 ? x : 0.0; }

/* x * y + z, rounded once where the CPU has a fused multiply-add. Written out, not left to the
 * compiler's contraction, which may fuse the vector loop and a lone sweep differently. */
#ifdef FP_FAST_FMA
#define MADD(x, y, z) fma(x, y, z)
#else
#define MADD(x, y, z) ((x) * (y) + (z))
#endif

/* One Gauss-Seidel sweep on {0,1,2,3} (3, 2, 1, 0) of the point whose entries are `stride`
 * apart (LANES in a block of lanes, 1 for a lone point); returns its L1 change. */
static inline double sweep4(const double *a, double *w, int stride, double lam) {
    double w0 = w[0], w1 = w[stride], w2 = w[2 * stride], w3 = w[3 * stride];
    double n3 = pos(MADD(-lam, MADD(w0, w1, MADD(w0, w2, w1 * w2)), a[3 * stride]));
    double n2 = pos(MADD(-lam, MADD(w0 + w1, n3, w0 * w1), a[2 * stride]));
    double n1 = pos(MADD(-lam, MADD(w0, n2 + n3, n2 * n3), a[stride]));
    double n0 = pos(MADD(-lam, MADD(n1, n2 + n3, n2 * n3), a[0]));
    w[0] = n0; w[stride] = n1; w[2 * stride] = n2; w[3 * stride] = n3;
    return fabs(n0 - w0) + fabs(n1 - w1) + fabs(n2 - w2) + fabs(n3 - w3);
}

/* One sweep on {0,1,2} (2, 1, 0) with w3 = 0; returns its L1 change. */
static inline double sweep3(const double *a, double *w, int stride, double lam) {
    double w0 = w[0], w1 = w[stride], w2 = w[2 * stride];
    double n2 = pos(MADD(-lam, w0 * w1, a[2 * stride]));
    double n1 = pos(MADD(-lam * w0, n2, a[stride]));
    double n0 = pos(MADD(-lam * n1, n2, a[0]));
    w[0] = n0; w[stride] = n1; w[2 * stride] = n2;
    return fabs(n0 - w0) + fabs(n1 - w1) + fabs(n2 - w2);
}

static inline double objective(const double *a, const double *w, double lam) {
    double d0 = w[0] - a[0], d1 = w[1] - a[1], d2 = w[2] - a[2], d3 = w[3] - a[3];
    double r = w[0] * w[1] * (w[2] + w[3]) + w[2] * w[3] * (w[0] + w[1]);
    return 0.5 * (d0 * d0 + d1 * d1 + d2 * d2 + d3 * d3) + lam * r;
}

static inline double plus_root(double a, double t) { return 0.5 * (a + sqrt(pos(a * a - 4.0 * t))); }

/* The 3-support stationary point on the branch w_i = (a_i + sqrt(a_i^2 - 4t)) / 2, t = lam w0 w1 w2,
 * found by bisection on t (the residual is decreasing). Coordinate minimisation from w = 0 stalls
 * on the boundary where lam a1 a2 == a0 exactly (tied groups); this recovers the interior point.
 * Returns 0 when the branch has no stationary point. */
static int plus_branch3(const double *a, double lam, double *w) {
    double lo = 0.0, hi = 0.25 * a[2] * a[2];
    if (lam * plus_root(a[0], hi) * plus_root(a[1], hi) * plus_root(a[2], hi) - hi > 0.0) return 0;
    for (int it = 0; it < 200 && hi - lo > 1e-17 * hi; ++it) {
        double mid = 0.5 * (lo + hi);
        if (lam * plus_root(a[0], mid) * plus_root(a[1], mid) * plus_root(a[2], mid) - mid > 0.0) lo = mid;
        else hi = mid;
    }
    for (int i = 0; i < 3; ++i) w[i] = plus_root(a[i], lo);
    w[3] = 0.0;
    return 1;
}

/* A Newton step on the stationarity equations w_i = a_i - lam e2(w without i) of the positive
 * entries among the first `support`, kept only when it stays positive and lowers f. */
static void newton_step(const double *a, double *w, double lam, int support) {
    double m[4][5], total = 0.0, trial[4] = {w[0], w[1], w[2], w[3]};
    int at[4], n = 0;
    for (int i = 0; i < support; ++i) {
        total += w[i];
        if (w[i] > 0.0) at[n++] = i;
    }
    for (int r = 0; r < n; ++r) {
        int i = at[r];
        double pairs = 0.0;  /* e2 of the other entries */
        for (int j = 0; j < support; ++j)
            for (int k = j + 1; k < support; ++k) pairs += j != i && k != i ? w[j] * w[k] : 0.0;
        for (int col = 0; col < n; ++col) m[r][col] = col == r ? 1.0 : lam * (total - w[i] - w[at[col]]);
        m[r][n] = -(w[i] - a[i] + lam * pairs);
    }
    for (int col = 0; col < n; ++col) {  /* Gaussian elimination with partial pivoting */
        int pivot = col;
        for (int r = col + 1; r < n; ++r)
            if (fabs(m[r][col]) > fabs(m[pivot][col])) pivot = r;
        if (fabs(m[pivot][col]) < 1e-12) return;
        for (int k = 0; k <= n; ++k) {
            double t = m[col][k]; m[col][k] = m[pivot][k]; m[pivot][k] = t;
        }
        for (int r = col + 1; r < n; ++r) {
            double f = m[r][col] / m[col][col];
            for (int k = col; k <= n; ++k) m[r][k] -= f * m[col][k];
        }
    }
    for (int r = n - 1; r >= 0; --r) {
        double x = m[r][n];
        for (int k = r + 1; k < n; ++k) x -= m[r][k] * trial[at[k]];
        x = x / m[r][r];
        trial[at[r]] = x;  /* the step, for now */
    }
    for (int r = 0; r < n; ++r) {
        trial[at[r]] += w[at[r]];
        if (!(trial[at[r]] > 0.0)) return;
    }
    if (objective(a, trial, lam) <= objective(a, w, lam))
        for (int i = 0; i < support; ++i) w[i] = trial[i];
}

/* Finish a slow search from w after `sweeps` sweeps: Newton steps, each followed by the sweep
 * that decides convergence as before, so the end is the sweeps' own kind of point, reached in
 * a few steps where the sweeps alone contract slowly. */
static void polish(const double *a, double *w, double lam, double tol, int support, int sweeps) {
    for (; sweeps < MAX_SWEEPS; ++sweeps) {
        newton_step(a, w, lam, support);
        if ((support == 4 ? sweep4(a, w, 1, lam) : sweep3(a, w, 1, lam)) <= tol) return;
    }
}

/* Index of the first non-finite entry of x[0..n), or -1: a block at a time, without a branch per
 * entry (the compiler vectorises it), then entry by entry in the one block that has it. */
#define FIRST_NONFINITE(T, ABS, LARGEST)                                   \
    int64_t first_nonfinite_##T(const T *x, int64_t n) {                  \
        for (int64_t start = 0; start < n; start += 4096) {                \
            int64_t end = n - start < 4096 ? n : start + 4096;             \
            int bad = 0;                                                   \
            for (int64_t i = start; i < end; ++i) bad |= !(ABS(x[i]) <= LARGEST); \
            for (int64_t i = start; bad && i < end; ++i)                   \
                if (!(ABS(x[i]) <= LARGEST)) return i;                     \
        }                                                                  \
        return -1;                                                         \
    }

FIRST_NONFINITE(float, fabsf, FLT_MAX)
FIRST_NONFINITE(double, fabs, DBL_MAX)

#define T float
#define SLACK 1e-5
#define REL_TOL 1e-8
#include "_prox24_solve.h"
#undef T
#undef SLACK
#undef REL_TOL

#define T double
#define SLACK 1e-12
#define REL_TOL 1e-13
#include "_prox24_solve.h"
#undef T
#undef SLACK
#undef REL_TOL
