/* Exact proximal operator of lam * R for groups of 4 (EnumALM), solved per group.
 *
 * R(w) = sum over the 4 triples i<j<k of |wi wj wk|. On the sorted magnitudes
 * a0 >= a1 >= a2 >= a3 the candidates are (a0, a1, 0, 0), and coordinate minimisation on
 * the supports {0,1,2} and {0,1,2,3} from w = 0, sweeping from the smallest entry up; each
 * update is exact: w_k <- max(a_k - lam * S_k, 0), S_k = sum of pairwise products of the
 * other entries. The candidate with the smallest 1/2||w - a||^2 + lam R(w) wins.
 *
 * Groups are solved LANES at a time in plain loops the compiler vectorises; a block stops
 * as soon as all its groups have converged, and the rare groups still moving after
 * VECTOR_SWEEPS continue alone. Cheap certificates, from bounds on the stationary points
 * that follow from the sorted input, skip a support search that cannot win.
 * Plain C, no dependency: built once at first use and loaded through ctypes; the caller
 * splits the groups between threads (ctypes releases the GIL).
 */
#include <math.h>
#include <stdint.h>

#define LANES 16
#define VECTOR_SWEEPS 12
#define MAX_SWEEPS 1000

static inline double pos(double x) { return x > 0.0 ? x : 0.0; }

/* One Gauss-Seidel sweep on {0,1,2,3} (sweep 3,2,1,0) of lane l; returns its L1 change. */
static inline double sweep4(double (*a)[LANES], double (*w)[LANES], int l, double lam) {
    double w0 = w[0][l], w1 = w[1][l], w2 = w[2][l], w3 = w[3][l];
    double n3 = pos(a[3][l] - lam * (w0 * w1 + w0 * w2 + w1 * w2));
    double n2 = pos(a[2][l] - lam * (w0 * w1 + (w0 + w1) * n3));
    double n1 = pos(a[1][l] - lam * (w0 * (n2 + n3) + n2 * n3));
    double n0 = pos(a[0][l] - lam * (n1 * (n2 + n3) + n2 * n3));
    w[0][l] = n0; w[1][l] = n1; w[2][l] = n2; w[3][l] = n3;
    return fabs(n0 - w0) + fabs(n1 - w1) + fabs(n2 - w2) + fabs(n3 - w3);
}

/* One sweep on {0,1,2} (sweep 2,1,0) of lane l with w3 = 0; returns its L1 change. */
static inline double sweep3(double (*a)[LANES], double (*w)[LANES], int l, double lam) {
    double w0 = w[0][l], w1 = w[1][l], w2 = w[2][l];
    double n2 = pos(a[2][l] - lam * w0 * w1);
    double n1 = pos(a[1][l] - lam * w0 * n2);
    double n0 = pos(a[0][l] - lam * n1 * n2);
    w[0][l] = n0; w[1][l] = n1; w[2][l] = n2;
    return fabs(n0 - w0) + fabs(n1 - w1) + fabs(n2 - w2);
}

static inline double objective(double (*a)[LANES], double (*w)[LANES], int l, double lam) {
    double d0 = w[0][l] - a[0][l], d1 = w[1][l] - a[1][l], d2 = w[2][l] - a[2][l], d3 = w[3][l] - a[3][l];
    double r = w[0][l] * w[1][l] * (w[2][l] + w[3][l]) + w[2][l] * w[3][l] * (w[0][l] + w[1][l]);
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

/* Coordinate minimisation of LANES groups (a, w as [entry][lane]) from w = 0 until each
 * group's sweep changes it by at most tol[lane]; `support` is 3 or 4. */
static void minimise(double (*a)[LANES], double (*w)[LANES], const double *tol, double lam, int support) {
    double change[LANES];
    for (int i = 0; i < 4; ++i)
        for (int l = 0; l < LANES; ++l) w[i][l] = 0.0;
    int sweeps = 0, moving = 1;
    while (moving && sweeps < VECTOR_SWEEPS) {
        if (support == 4) {
            for (int l = 0; l < LANES; ++l) change[l] = sweep4(a, w, l, lam);
        } else {
            for (int l = 0; l < LANES; ++l) change[l] = sweep3(a, w, l, lam);
        }
        moving = 0;
        for (int l = 0; l < LANES; ++l) moving |= change[l] > tol[l];
        ++sweeps;
    }
    if (!moving) return;
    for (int l = 0; l < LANES; ++l) {
        for (int s = sweeps; s < MAX_SWEEPS && change[l] > tol[l]; ++s)
            change[l] = support == 4 ? sweep4(a, w, l, lam) : sweep3(a, w, l, lam);
    }
}

/* Compare-exchange in (magnitude descending, position ascending) order. */
#define ORDER(i, j)                                                              \
    do {                                                                         \
        int swap = v[j] > v[i] || (v[j] == v[i] && p[j] < p[i]);                 \
        double tv = swap ? v[j] : v[i]; v[j] = swap ? v[i] : v[j]; v[i] = tv;    \
        int tp = swap ? p[j] : p[i]; p[j] = swap ? p[i] : p[j]; p[i] = tp;       \
    } while (0)

static void solve_block(const double (*z)[4], double (*result)[4], double lam, double rel_tol) {
    double a[4][LANES], best[4][LANES], w[4][LANES], best_obj[LANES], tol[LANES];
    int pos_of[4][LANES], try4[LANES], try3[LANES];
    int need4 = 0, need3 = 0;
    const double cap = 1.0 / lam;   /* lam > 0 here: the caller handles lam == 0 */
    for (int l = 0; l < LANES; ++l) {
        double v[4] = {fabs(z[l][0]), fabs(z[l][1]), fabs(z[l][2]), fabs(z[l][3])};
        int p[4] = {0, 1, 2, 3};
        ORDER(0, 1); ORDER(2, 3); ORDER(0, 2); ORDER(1, 3); ORDER(1, 2);
        for (int i = 0; i < 4; ++i) { a[i][l] = v[i]; pos_of[i][l] = p[i]; }
    }
    for (int l = 0; l < LANES; ++l) {
        best[0][l] = a[0][l]; best[1][l] = a[1][l]; best[2][l] = best[3][l] = 0.0;
        best_obj[l] = 0.5 * (a[2][l] * a[2][l] + a[3][l] * a[3][l]);
        tol[l] = rel_tol * a[0][l];
        /* A local minimum has a PSD Hessian; its 2x2 minors give lam (w_i + w_j) <= 1 on the
         * 4-support (so w <= c = min(a, 1/lam)), and w_i = a_i - lam e2(w without i) >= lb_i. */
        double c0 = fmin(a[0][l], cap), c1 = fmin(a[1][l], cap), c2 = fmin(a[2][l], cap), c3 = fmin(a[3][l], cap);
        double lb0 = pos(a[0][l] - lam * (c1 * c2 + c1 * c3 + c2 * c3));
        double lb1 = pos(a[1][l] - lam * (c0 * c2 + c0 * c3 + c2 * c3));
        try4[l] = a[3][l] > 0.0 && lam * (lb0 + lb1) <= 1.0;
        need4 |= try4[l];
    }
    if (need4) {
        minimise(a, w, tol, lam, 4);
        for (int l = 0; l < LANES; ++l) {
            double obj = objective(a, w, l, lam);
            if (try4[l] && obj < best_obj[l]) {
                best_obj[l] = obj;
                for (int i = 0; i < 4; ++i) best[i][l] = w[i][l];
            }
        }
    }
    for (int l = 0; l < LANES; ++l) {
        /* At a 3-support stationary point f3 = f2 - w2^2 (1 - lam^2 (w0^2 + w1^2)) / 2; at a local
         * minimum also lam w_k <= 1 (2x2 minors), so w0 >= lb0, w1 >= lb1, w2 <= ub2 bound f3 below. */
        double c0 = fmin(a[0][l], cap), c1 = fmin(a[1][l], cap), c2 = fmin(a[2][l], cap);
        double lb0 = pos(a[0][l] - lam * c1 * c2);
        double lb1 = pos(a[1][l] - lam * c0 * c2);
        double ub2 = fmin(pos(a[2][l] - lam * lb0 * lb1), cap);
        double gain = 1.0 - lam * lam * (lb0 * lb0 + lb1 * lb1);
        double f2 = 0.5 * (a[2][l] * a[2][l] + a[3][l] * a[3][l]);
        try3[l] = a[2][l] > 0.0 && gain > 0.0 && best_obj[l] > f2 - 0.5 * ub2 * ub2 * gain;
        need3 |= try3[l];
    }
    if (need3) {
        minimise(a, w, tol, lam, 3);
        for (int l = 0; l < LANES; ++l) {
            w[3][l] = 0.0;
            double obj = objective(a, w, l, lam);
            if (try3[l] && obj < best_obj[l]) {
                best_obj[l] = obj;
                for (int i = 0; i < 4; ++i) best[i][l] = w[i][l];
            }
            double ai[4] = {a[0][l], a[1][l], a[2][l], a[3][l]}, wi[4];
            if (try3[l] && (w[0][l] == 0.0 || w[1][l] == 0.0 || w[2][l] == 0.0) && plus_branch3(ai, lam, wi)) {
                double d0 = wi[0] - ai[0], d1 = wi[1] - ai[1], d2 = wi[2] - ai[2];
                obj = 0.5 * (d0 * d0 + d1 * d1 + d2 * d2 + ai[3] * ai[3]) + lam * wi[0] * wi[1] * wi[2];
                if (obj < best_obj[l]) {
                    best_obj[l] = obj;
                    for (int i = 0; i < 4; ++i) best[i][l] = wi[i];
                }
            }
        }
    }
    for (int l = 0; l < LANES; ++l)
        for (int i = 0; i < 4; ++i) {
            int p = pos_of[i][l];
            result[l][p] = best[i][l] == 0.0 ? 0.0 : copysign(best[i][l], z[l][p]);
        }
}

/* Index of the first non-finite entry of x[0..n), or -1. */
#define FIRST_NONFINITE(T)                                       \
    int64_t first_nonfinite_##T(const T *x, int64_t n) {        \
        for (int64_t i = 0; i < n; ++i)                          \
            if (!isfinite(x[i])) return i;                       \
        return -1;                                               \
    }

/* out[g] = prox(x[g]) for groups g in [0, groups); x may equal out (in place). Groups that
 * already have at most two non-zeros are their own prox and are left as they are. */
#define PROX(T, REL_TOL)                                                             \
    void prox24_##T(const T *x, T *out, int64_t groups, double lam) {               \
        double z[LANES][4], result[LANES][4];                                        \
        for (int64_t g0 = 0; g0 < groups; g0 += LANES) {                             \
            int n = groups - g0 < LANES ? (int)(groups - g0) : LANES;                \
            const T *src = x + 4 * g0;                                               \
            T *dst = out + 4 * g0;                                                   \
            for (int l = 0; l < LANES; ++l)                                          \
                for (int i = 0; i < 4; ++i) z[l][i] = l < n ? (double)src[4 * l + i] : 0.0; \
            solve_block((const double (*)[4])z, result, lam, REL_TOL);                \
            for (int l = 0; l < n; ++l) {                                            \
                int nonzero = (z[l][0] != 0) + (z[l][1] != 0) + (z[l][2] != 0) + (z[l][3] != 0); \
                for (int i = 0; i < 4; ++i)                                          \
                    dst[4 * l + i] = nonzero <= 2 ? src[4 * l + i] : (T)result[l][i]; \
            }                                                                        \
        }                                                                            \
    }

FIRST_NONFINITE(float)
FIRST_NONFINITE(double)
PROX(float, 1e-8)
PROX(double, 1e-13)
