/* Exact proximal operator of lam * R for groups of 4, one group per iteration.
 *
 * R(w) = sum over the 4 triples i<j<k of |wi wj wk|. For each group EnumALM compares three
 * candidates on the sorted magnitudes a1 >= a2 >= a3 >= a4: (a1, a2, 0, 0); coordinate
 * minimisation on the support {1,2,3}; and on {1,2,3,4}. Each coordinate update is exact,
 * w_k <- max(a_k - lam * S_k, 0), S_k = sum of pairwise products of the other entries.
 * Convergence is tested per group, so a group costs only the sweeps it needs.
 * Plain C with no dependency: built once at first use and loaded through ctypes; the caller
 * splits the groups between threads (ctypes releases the GIL).
 */
#include <math.h>
#include <stdint.h>

#define MAX_SWEEPS 1000
#define REL_TOL 1e-12

static double sq(double x) { return x * x; }

/* Coordinate minimisation on {1,2,3} (w4 = 0) from w = 0, sweeping 3,2,1. */
static double support3(const double a[4], double lam, double w[4]) {
    double w1 = 0, w2 = 0, w3 = 0;
    double tol = REL_TOL * a[0];
    for (int it = 0; it < MAX_SWEEPS; ++it) {
        double n3 = fmax(a[2] - lam * w1 * w2, 0.0);
        double n2 = fmax(a[1] - lam * w1 * n3, 0.0);
        double n1 = fmax(a[0] - lam * n2 * n3, 0.0);
        double change = fabs(n1 - w1) + fabs(n2 - w2) + fabs(n3 - w3);
        w1 = n1; w2 = n2; w3 = n3;
        if (change <= tol) break;
    }
    w[0] = w1; w[1] = w2; w[2] = w3; w[3] = 0.0;
    return 0.5 * (sq(w1 - a[0]) + sq(w2 - a[1]) + sq(w3 - a[2]) + sq(a[3])) + lam * w1 * w2 * w3;
}

/* Coordinate minimisation on {1,2,3,4} from w = 0, sweeping 4,3,2,1. */
static double support4(const double a[4], double lam, double w[4]) {
    double w1 = 0, w2 = 0, w3 = 0, w4 = 0;
    double tol = REL_TOL * a[0];
    for (int it = 0; it < MAX_SWEEPS; ++it) {
        double n4 = fmax(a[3] - lam * (w1 * w2 + w1 * w3 + w2 * w3), 0.0);
        double n3 = fmax(a[2] - lam * (w1 * w2 + w1 * n4 + w2 * n4), 0.0);
        double n2 = fmax(a[1] - lam * (w1 * n3 + w1 * n4 + n3 * n4), 0.0);
        double n1 = fmax(a[0] - lam * (n2 * n3 + n2 * n4 + n3 * n4), 0.0);
        double change = fabs(n1 - w1) + fabs(n2 - w2) + fabs(n3 - w3) + fabs(n4 - w4);
        w1 = n1; w2 = n2; w3 = n3; w4 = n4;
        if (change <= tol) break;
    }
    w[0] = w1; w[1] = w2; w[2] = w3; w[3] = w4;
    double e3 = w1 * w2 * (w3 + w4) + w3 * w4 * (w1 + w2);
    return 0.5 * (sq(w1 - a[0]) + sq(w2 - a[1]) + sq(w3 - a[2]) + sq(w4 - a[3])) + lam * e3;
}

/* Solve one group in place on z[0..3]. */
static void prox_group(double z[4], double lam) {
    int nonzero = (z[0] != 0) + (z[1] != 0) + (z[2] != 0) + (z[3] != 0);
    if (nonzero <= 2 || lam == 0) return;            /* R = 0 already: z is its own prox */

    /* Sort positions by magnitude, descending; on ties the lower index comes first. */
    int order[4] = {0, 1, 2, 3};
    for (int i = 1; i < 4; ++i) {
        int p = order[i];
        int j = i - 1;
        while (j >= 0 && fabs(z[order[j]]) < fabs(z[p])) { order[j + 1] = order[j]; --j; }
        order[j + 1] = p;
    }
    double a[4];
    for (int i = 0; i < 4; ++i) a[i] = fabs(z[order[i]]);

    double best[4] = {a[0], a[1], 0.0, 0.0};
    double best_obj = 0.5 * (sq(a[2]) + sq(a[3]));
    double w[4];
    double obj = support3(a, lam, w);
    if (obj < best_obj) { best_obj = obj; for (int i = 0; i < 4; ++i) best[i] = w[i]; }
    obj = support4(a, lam, w);
    if (obj < best_obj) { best_obj = obj; for (int i = 0; i < 4; ++i) best[i] = w[i]; }

    for (int i = 0; i < 4; ++i) {
        int p = order[i];
        z[p] = best[i] == 0.0 ? 0.0 : copysign(best[i], z[p]);
    }
}

/* Index of the first non-finite entry of x[0..n), or -1. */
#define FIRST_NONFINITE(T)                                        \
    int64_t first_nonfinite_##T(const T *x, int64_t n) {         \
        for (int64_t i = 0; i < n; ++i)                           \
            if (!isfinite(x[i])) return i;                        \
        return -1;                                                \
    }

/* out[g] = prox(x[g]) for groups g in [0, groups); x may equal out (in place). */
#define PROX(T)                                                                   \
    void prox24_##T(const T *x, T *out, int64_t groups, double lam) {            \
        for (int64_t g = 0; g < groups; ++g) {                                    \
            double z[4] = {x[4 * g], x[4 * g + 1], x[4 * g + 2], x[4 * g + 3]};   \
            prox_group(z, lam);                                                   \
            for (int i = 0; i < 4; ++i) out[4 * g + i] = (T)z[i];                 \
        }                                                                         \
    }

FIRST_NONFINITE(float)
FIRST_NONFINITE(double)
PROX(float)
PROX(double)
