/* Exact proximal operator of lam * R for groups of 4, solved per group.
 *
 * R(w) = sum over the 4 triples i<j<k of |wi wj wk|. On the sorted magnitudes
 * a0 >= a1 >= a2 >= a3, f(w) = 1/2||w - a||^2 + lam R(w); its minimiser is (a0, a1, 0, 0), the
 * local minimum inside {0,1,2} (w3 = 0) or the one inside {0,1,2,3}: EnumALM's three candidates,
 * the best of which wins.
 *
 * Settled groups: (a0, a1, 0, 0) is the prox of most groups once lam a1 is large enough, and that
 * threshold moves monotonically with the group (see top2_certified in _prox24_solve.h). A table of
 * thresholds over a1 / a0 and a2 / a1, built at load by the solver itself (prox24_prepare), settles
 * them with a lookup: 90% of randn groups at lam 1, all but a few at lam 3 and above.
 *
 * Convex groups, lam (|z0| + |z1| + |z2| + |z3|) < CONVEX_BOUND (most groups where lam times the
 * weights' square is small, as in training): f is strictly convex on the box [0, a] that holds
 * every minimiser, so coordinate minimisation on {0,1,2,3} from w = a reaches the global minimum,
 * whatever its support. They are taken BLOCK consecutive groups side by side: sweeps and a Newton
 * step in float, a Newton step and a sweep in double (its Jacobian I + lam H is positive definite
 * there), and the few still moving go on in the lanes below.
 *
 * The other groups:
 * - {0,1,2} exactly. Its stationary points are w2 = x, w_i = (a_i + sqrt(a_i^2 - 4 x (a2 - x))) / 2
 *   (i = 0, 1) at the roots of phi(x) = (a0 + s0)(a1 + s1) - 4 (a2 - x) / lam on (0, a2]; phi is
 *   convex, phi(a2) > 0, and its largest root is the local minimum. Newton steps from an upper
 *   bound on w2 fall onto that root without passing it, or prove there is none.
 * - {0,1,2,3} by coordinate minimisation from the middle of its bounds, only where {0,1,2} has a
 *   local minimum w* (checked over 7.2M groups: a 4-support prox never occurred without one), and
 *   stopped as soon as it reaches the face w3 = 0 where a3 <= lam e2(w*) (there it would end at
 *   w*, already a candidate; over the comparisons in benchmarks/RESULTS.md the result was never
 *   worse than searching on). The rare search still moving after POLISH_AFTER sweeps (near a fold,
 *   where sweeps crawl) finishes with Newton steps.
 * - Bounds on every local minimum of a support (below) prove most candidates cannot win, so most
 *   groups need neither; they also give the searches their starts.
 *
 * Groups are taken CHUNK at a time (_prox24_solve.h): one pass sorts them and proves what it can in
 * the input's own precision, then the searches left sweep LANES side by side in double, in loops
 * the compiler vectorises, a lane taking the next group as soon as its own has ended. Every group of
 * one kind (settled, convex, or neither) takes the same steps wherever it sits: a chunk where one
 * kind to solve makes up 7/8 solves it in place and sets the others aside, to be solved with others
 * of their kind in a chunk of their own. Plain C, no dependency but libm (and OpenMP where the
 * compiler has it): built once per CPU at first use and loaded through ctypes; the caller splits
 * the groups into spans, which prox24_spans runs in the caller's OpenMP team (or the caller runs in
 * threads of its own), and allocates the workspaces.
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
#include <stdlib.h>
#include <string.h>

#define LANES 64 /* one bit each in a 64-bit word */
#define CHUNK 2048 /* groups; the caller splits threads on multiples of it */
#if CHUNK % LANES
#error "a chunk is whole blocks of LANES groups"
#endif
#define MAX_SWEEPS 1000
#define POLISH_AFTER 64 /* sweeps; slower searches switch to Newton steps */
#define CONVEX_BOUND 0.95 /* below 1 (convexity); with the Newton steps these groups still end fast */
#define BLOCK 64 /* convex groups swept side by side */
#if BLOCK != LANES
#error "convex_blocks lists a block's moving groups from one word of lane bits"
#endif
#define FLOAT_SWEEPS 2 /* every convex group's first sweeps, in float, before its Newton steps */
#define BLOCK_SWEEPS (FLOAT_SWEEPS + 1) /* and the sweep after them that says whether it has ended */
#define NEWTON3_MAX 200 /* Newton steps on {0,1,2} at most */
#define TOP2_GRID 64 /* cells per unit of a1 / a0 and of a2 / a1 in the top-2 table */
#define TOP2_SIDE (TOP2_GRID + 2)

/* The top-2 table: 1 / (the least lam a1 at which (a0, a1, 0, 0) is the prox) at the corners
 * q = (GRID / i0, 1, i2 / GRID, i2 / GRID) of a grid over a1 / a0 and a2 / a1, with a margin of
 * TOP2_MARGIN; 0 where it never is, and everywhere until prox24_prepare has built it. The corner
 * takes a3 = a2, the most it can be: on randn groups a third axis for a3 / a1 settled no more
 * (benchmarks/RESULTS.md), and the table stays small enough for the L1 cache. */
#define TOP2_MARGIN 1e-5
static float top2_table[TOP2_SIDE * TOP2_SIDE];

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
static inline float posf(float x) { return x > 0.0f ? x : 0.0f; }

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

/* One Newton step on the stationarity equations w_i = a_i - lam e2(w without i) of the point's
 * positive entries (the others stay 0), for a convex group: its Jacobian I + lam H (H_ij = the sum
 * of the entries other than i and j) is then positive definite, so elimination needs no pivots.
 * Without branches, for the point whose entries are `stride` apart; the result is clipped at 0.
 * Defined for float (R = float) and double. */
#define NEWTON4(NAME, R, POS)                                                                        \
    static inline void NAME(const R *a, R *w, int stride, R lam) {                                   \
        R w0 = w[0], w1 = w[stride], w2 = w[2 * stride], w3 = w[3 * stride];                         \
        R m0 = w0 > 0, m1 = w1 > 0, m2 = w2 > 0, m3 = w3 > 0;                                       \
        R r0 = m0 * (a[0] - w0 - lam * (w1 * w2 + w1 * w3 + w2 * w3));                              \
        R r1 = m1 * (a[stride] - w1 - lam * (w0 * w2 + w0 * w3 + w2 * w3));                          \
        R r2 = m2 * (a[2 * stride] - w2 - lam * (w0 * w1 + w0 * w3 + w1 * w3));                      \
        R r3 = m3 * (a[3 * stride] - w3 - lam * (w0 * w1 + w0 * w2 + w1 * w2));                      \
        R j01 = m0 * m1 * lam * (w2 + w3), j02 = m0 * m2 * lam * (w1 + w3), j03 = m0 * m3 * lam * (w1 + w2); \
        R j12 = m1 * m2 * lam * (w0 + w3), j13 = m1 * m3 * lam * (w0 + w2), j23 = m2 * m3 * lam * (w0 + w1); \
        R j11 = 1 - j01 * j01, j22 = 1 - j02 * j02, j33 = 1 - j03 * j03; /* pivot 0 is 1 */         \
        j12 -= j01 * j02; j13 -= j01 * j03; j23 -= j02 * j03;                                        \
        r1 -= j01 * r0; r2 -= j02 * r0; r3 -= j03 * r0;                                              \
        R p1 = 1 / j11, f2 = j12 * p1, f3 = j13 * p1;                                                \
        j22 -= f2 * j12; j23 -= f2 * j13; j33 -= f3 * j13;                                           \
        r2 -= f2 * r1; r3 -= f3 * r1;                                                                \
        R p2 = 1 / j22, g3 = j23 * p2;                                                               \
        j33 -= g3 * j23; r3 -= g3 * r2;                                                              \
        R d3 = r3 / j33, d2 = (r2 - j23 * d3) * p2, d1 = (r1 - j12 * d2 - j13 * d3) * p1;            \
        R d0 = r0 - j01 * d1 - j02 * d2 - j03 * d3;                                                  \
        w[0] = POS(w0 + d0); w[stride] = POS(w1 + d1); w[2 * stride] = POS(w2 + d2); w[3 * stride] = POS(w3 + d3); \
    }
NEWTON4(newton4, double, pos)
NEWTON4(newton4f, float, posf)

static inline double objective(const double *a, const double *w, double lam) {
    double d0 = w[0] - a[0], d1 = w[1] - a[1], d2 = w[2] - a[2], d3 = w[3] - a[3];
    double r = w[0] * w[1] * (w[2] + w[3]) + w[2] * w[3] * (w[0] + w[1]);
    return 0.5 * (d0 * d0 + d1 * d1 + d2 * d2 + d3 * d3) + lam * r;
}

/* A Newton step on the stationarity equations w_i = a_i - lam e2(w without i) of the positive
 * entries, kept only when it stays positive and lowers f. */
static void newton_step(const double *a, double *w, double lam) {
    const int support = 4;
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
static void polish(const double *a, double *w, double lam, double tol, int sweeps) {
    for (; sweeps < MAX_SWEEPS; ++sweeps) {
        newton_step(a, w, lam);
        if (sweep4(a, w, 1, lam) <= tol) return;
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
#define NEWTON3_TOL 1e-9
#include "_prox24_solve.h"
#undef T
#undef SLACK
#undef REL_TOL
#undef NEWTON3_TOL

#define T double
#define SLACK 1e-12
#define REL_TOL 1e-13
#define NEWTON3_TOL 1e-12
#include "_prox24_solve.h"
#undef T
#undef SLACK
#undef REL_TOL
#undef NEWTON3_TOL

/* Build the top-2 table with the solver itself (the table still empty, so every group is solved):
 * at every corner the prox can ask for (i0, i2 >= 1), bisection on log(lam) for the
 * least lam at which the prox of q keeps its two largest entries as they are and zeroes the others,
 * taken from above. Call once before any prox24 call (until then the solver certifies nothing);
 * later calls do nothing. Returns 0, or -1 where memory runs out or a solve fails (the table
 * stays empty). */
int prox24_prepare(void) {
    enum { MOST = TOP2_SIDE * TOP2_SIDE, STEPS = 40 };
    static int prepared = 0;
    if (prepared) return 0;
    int *cell = malloc(sizeof(int) * MOST);
    double *corner = malloc(sizeof(double) * 4 * MOST), *z = malloc(sizeof(double) * 4 * MOST);
    double *out = malloc(sizeof(double) * 4 * MOST), *low = malloc(sizeof(double) * MOST);
    double *high = malloc(sizeof(double) * MOST);
    void *workspace = malloc((size_t)prox24_workspace_double());
    int ok = cell && corner && z && out && low && high && workspace, cells = 0;
    for (int i0 = 1; ok && i0 < TOP2_SIDE; ++i0)
        for (int i2 = 1; i2 < TOP2_SIDE; ++i2, ++cells) {
            double *q = corner + 4 * cells;
            q[0] = (double)TOP2_GRID / i0; q[1] = 1.0; q[2] = q[3] = (double)i2 / TOP2_GRID;
            cell[cells] = i0 * TOP2_SIDE + i2;
            low[cells] = log(1e-6); high[cells] = log(1e9);
        }
    /* step -1 asks at the top of the range whether the corner is ever settled */
    for (int step = -1; ok && step < STEPS; ++step) {
        for (int k = 0; k < cells; ++k) {  /* a corner never settled is done: any finite lam */
            double lam = !isfinite(high[k]) ? 1.0 : exp(step < 0 ? high[k] : 0.5 * (low[k] + high[k]));
            for (int i = 0; i < 4; ++i) z[4 * k + i] = corner[4 * k + i] * lam;
        }
        ok = prox24_double(z, out, cells, 1.0, workspace) < 0;  /* prox(lam q, 1) = lam prox(q, lam) */
        for (int k = 0; k < cells; ++k) {
            const double *zk = z + 4 * k, *wk = out + 4 * k;
            int top2 = wk[0] == zk[0] && wk[1] == zk[1] && wk[2] == 0.0 && wk[3] == 0.0;
            double mid = 0.5 * (low[k] + high[k]);
            if (step < 0) high[k] = top2 ? high[k] : INFINITY;
            else if (isfinite(high[k])) *(top2 ? &high[k] : &low[k]) = mid;
        }
    }
    for (int k = 0; ok && k < cells; ++k)
        top2_table[cell[k]] = isfinite(high[k]) ? (float)(1.0 / (exp(high[k]) * (1.0 + TOP2_MARGIN))) : 0.0f;
    free(cell); free(corner); free(z); free(out); free(low); free(high); free(workspace);
    prepared = ok;
    return ok ? 0 : -1;
}

/* 1 where the top-2 table settles group z (its 4 entries) at lam without solving it: what the
 * tests ask of the table. */
int prox24_top2_settled(const double *z, double lam) {
    double a[4] = {fabs(z[0]), fabs(z[1]), fabs(z[2]), fabs(z[3])};
    for (int i = 1; i < 4; ++i)
        for (int j = i; j > 0 && a[j] > a[j - 1]; --j) {
            double t = a[j]; a[j] = a[j - 1]; a[j - 1] = t;
        }
    return a[2] == 0.0 || top2_certified_double(a[0], a[1], a[2], lam);
}

/* 1 where this build runs spans side by side itself (OpenMP, in the caller's thread team: where
 * torch's own OpenMP runtime is loaded, the same threads torch's ops use, so none of them spins
 * against the solver). */
int prox24_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* found[s] = prox24 over groups [lo[s], hi[s]) with workspace s (workspace_bytes apart), the spans
 * side by side (one thread each, with OpenMP; one after another without). */
#define PROX24_SPANS(T)                                                                            \
    void prox24_spans_##T(const T *x, T *out, double lam, const int64_t *lo, const int64_t *hi,   \
                          int spans, unsigned char *workspaces, int64_t workspace_bytes,           \
                          int64_t *found) {                                                        \
        _Pragma("omp parallel for num_threads(spans) schedule(static, 1)")                         \
        for (int s = 0; s < spans; ++s)                                                            \
            found[s] = prox24_##T(x + 4 * lo[s], out + 4 * lo[s], hi[s] - lo[s], lam,              \
                                  workspaces + s * workspace_bytes);                               \
    }
PROX24_SPANS(float)
PROX24_SPANS(double)

/* found[s] = first_nonfinite over entries [lo[s], hi[s]) of x, relative to lo[s], the spans side by
 * side as in prox24_spans: the check an in-place call makes before it writes anything. */
#define FIRST_NONFINITE_SPANS(T)                                                                   \
    void first_nonfinite_spans_##T(const T *x, const int64_t *lo, const int64_t *hi, int spans,   \
                                   int64_t *found) {                                               \
        _Pragma("omp parallel for num_threads(spans) schedule(static, 1)")                         \
        for (int s = 0; s < spans; ++s) found[s] = first_nonfinite_##T(x + lo[s], hi[s] - lo[s]);   \
    }
FIRST_NONFINITE_SPANS(float)
FIRST_NONFINITE_SPANS(double)
