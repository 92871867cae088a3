/* The per-chunk solver for one input type, included by _prox24.c once per type with
 *   T      the input type (float or double): sorting and the bounds run in it, a vector at a time;
 *   SLACK  how much a bound must win by, relative to the group's scale, to skip a search
 *          (covers rounding in T);
 *   REL_TOL the coordinate sweeps' stopping tolerance, relative to a0.
 * The sweeps, the candidates' objectives and the choice between them run in double. */

#define JOIN_(a, b) a##_##b
#define JOIN(a, b) JOIN_(a, b)
#define NAME(x) JOIN(x, T)

static inline T NAME(lesser)(T x, T y) { return x < y ? x : y; }
static inline T NAME(greater)(T x, T y) { return x > y ? x : y; }
#define LESSER NAME(lesser)
#define GREATER NAME(greater)

/* CHUNK groups: a copy of the input, then [entry][group]: sorted magnitudes, the rank of each
 * position among them, where each search starts, and the best candidate so far (in double once
 * a search has improved on (a0, a1, 0, 0)); the groups a search takes, and those it ended
 * still moving or on an edge, to look at again. */
struct NAME(chunk) {
    T z[4 * CHUNK], a[4][CHUNK], rank[4][CHUNK], start[4][CHUNK], flag[CHUNK];
    double best[4][CHUNK], best_obj[CHUNK], found[4][CHUNK], improved[CHUNK];
    double rare_a[3][CHUNK], rare_done[CHUNK];
    int todo[CHUNK], rare[CHUNK], rare_sweeps[CHUNK];
};

/* Compare-exchange: the larger value first. */
#define ORDER(i, j)                                        \
    do {                                                   \
        T high = GREATER(v##i, v##j), low = LESSER(v##i, v##j); \
        v##i = high; v##j = low;                           \
    } while (0)

/* Entry k outranks entry j (k < j): larger magnitude, or equal and k first. */
#define FIRST(k, j) ((T)(m##k >= m##j))

static void NAME(sort_groups)(struct NAME(chunk) *c, const T *src, int n) {
    for (int i = 0; i < 4 * n; ++i) c->z[i] = src[i];
    for (int g = 0; g < n; ++g) {
        T m0 = fabs(c->z[4 * g]), m1 = fabs(c->z[4 * g + 1]), m2 = fabs(c->z[4 * g + 2]), m3 = fabs(c->z[4 * g + 3]);
        T f01 = FIRST(0, 1), f02 = FIRST(0, 2), f03 = FIRST(0, 3), f12 = FIRST(1, 2), f13 = FIRST(1, 3), f23 = FIRST(2, 3);
        c->rank[0][g] = (1 - f01) + (1 - f02) + (1 - f03);
        c->rank[1][g] = f01 + (1 - f12) + (1 - f13);
        c->rank[2][g] = f02 + f12 + (1 - f23);
        c->rank[3][g] = f03 + f13 + f23;
        T v0 = m0, v1 = m1, v2 = m2, v3 = m3;
        ORDER(0, 1); ORDER(2, 3); ORDER(0, 2); ORDER(1, 3); ORDER(1, 2);
        c->a[0][g] = v0; c->a[1][g] = v1; c->a[2][g] = v2; c->a[3][g] = v3;
    }
    for (int g = 0; g < n; ++g) {
        double a2 = c->a[2][g], a3 = c->a[3][g];
        c->best_obj[g] = 0.5 * (a2 * a2 + a3 * a3);
        c->improved[g] = 0.0;
    }
}

/* One round of bounds on {0,1,2,3}: lo from hi by stationarity, then hi from lo by
 * stationarity and by the pair condition lam (w_i + w_j) <= 1. */
#define BOUND4_ROUND                                                                            \
    l0 = GREATER(a0 - lam * (h1 * h2 + h1 * h3 + h2 * h3), 0);                                  \
    l1 = GREATER(a1 - lam * (h0 * h2 + h0 * h3 + h2 * h3), 0);                                  \
    l2 = GREATER(a2 - lam * (h0 * h1 + h0 * h3 + h1 * h3), 0);                                  \
    l3 = GREATER(a3 - lam * (h0 * h1 + h0 * h2 + h1 * h2), 0);                                  \
    m01 = GREATER(l0, l1); m23 = GREATER(l2, l3);                                               \
    h0 = LESSER(h0, LESSER(a0 - lam * (l1 * l2 + l1 * l3 + l2 * l3), cap - GREATER(l1, m23)));  \
    h1 = LESSER(h1, LESSER(a1 - lam * (l0 * l2 + l0 * l3 + l2 * l3), cap - GREATER(l0, m23)));  \
    h2 = LESSER(h2, LESSER(a2 - lam * (l0 * l1 + l0 * l3 + l1 * l3), cap - GREATER(l3, m01)));  \
    h3 = LESSER(h3, LESSER(a3 - lam * (l0 * l1 + l0 * l2 + l1 * l2), cap - GREATER(l2, m01)));

/* The bounds work on group g scaled to a0 = 1 (prox(c z, lam) = c prox(z, c lam)), so that
 * squares neither underflow nor overflow in T; best is the best objective on that scale. */
#define SCALED_GROUP                                                                            \
    T top = c->a[0][g], scale = top > 0 ? 1 / top : 0, lam = lam_all * top, cap = 1 / lam;      \
    T a0 = c->a[0][g] * scale, a1 = c->a[1][g] * scale, a2 = c->a[2][g] * scale, a3 = c->a[3][g] * scale; \
    T half_norm = (a0 * a0 + a1 * a1 + a2 * a2 + a3 * a3) / 2;                                  \
    T best = (T)(c->best_obj[g] * ((double)scale * scale));

/* flag[g] = 1 where a local minimum on {0,1,2,3} may beat the best candidate; its search
 * starts at the middle of the bounds. */
static void NAME(may_win4)(struct NAME(chunk) *c, int n, T lam_all) {
    for (int g = 0; g < n; ++g) {
        SCALED_GROUP
        T h0 = LESSER(a0, cap), h1 = LESSER(a1, cap), h2 = LESSER(a2, cap), h3 = LESSER(a3, cap);
        T l0, l1, l2, l3, m01, m23;
        BOUND4_ROUND BOUND4_ROUND
        T bound = half_norm + h0 * (h0 / 6 - a0 * 2 / 3) + h1 * (h1 / 6 - a1 * 2 / 3)
                + h2 * (h2 / 6 - a2 * 2 / 3) + h3 * (h3 / 6 - a3 * 2 / 3);
        T room = LESSER(LESSER(h0 - l0, h1 - l1), LESSER(h2 - l2, h3 - l3)) + (T)SLACK;
        T lowest = LESSER(LESSER(h0, h1), LESSER(h2, h3));  /* > 0 needs a3 > 0 */
        T margin = LESSER(room, best + (T)SLACK * half_norm - bound);
        c->flag[g] = (lowest > 0) & (margin > 0) ? 1 : 0;
        c->start[0][g] = (h0 + l0) / 2 * top; c->start[1][g] = (h1 + l1) / 2 * top;
        c->start[2][g] = (h2 + l2) / 2 * top; c->start[3][g] = (h3 + l3) / 2 * top;
        for (int i = 0; i < 4; ++i) c->found[i][g] = 0.0;  /* may_win3 reads it for every group */
    }
}

#define BOUND3_ROUND                      \
    l0 = GREATER(a0 - lam * h1 * h2, 0);  \
    l1 = GREATER(a1 - lam * h0 * h2, 0);  \
    l2 = GREATER(a2 - lam * h0 * h1, 0);  \
    h0 = LESSER(h0, a0 - lam * l1 * l2);  \
    h1 = LESSER(h1, a1 - lam * l0 * l2);  \
    h2 = LESSER(h2, a2 - lam * l0 * l1);

/* flag[g] = 1 where a local minimum on {0,1,2} may be the global minimum and beat the best
 * candidate; its search starts at the middle of the bounds, or where the search on {0,1,2,3}
 * ended on the face w3 = 0 (flag and found still hold that search's). */
static void NAME(may_win3)(struct NAME(chunk) *c, int n, T lam_all) {
    for (int g = 0; g < n; ++g) {
        SCALED_GROUP
        T h0 = LESSER(a0, cap), h1 = LESSER(a1, cap), h2 = LESSER(a2, cap);
        T l0, l1, l2;
        BOUND3_ROUND BOUND3_ROUND
        T f2 = (a2 * a2 + a3 * a3) / 2;
        T gain = 1 - lam * lam * (l0 * l0 + l1 * l1);
        T bound = GREATER(f2 - h2 * h2 * GREATER(gain, 0) / 2,
                          half_norm + h0 * (h0 / 6 - a0 * 2 / 3) + h1 * (h1 / 6 - a1 * 2 / 3) + h2 * (h2 / 6 - a2 * 2 / 3));
        T room = LESSER(LESSER(h0 - l0, h1 - l1), h2 - l2) + (T)SLACK;
        T lowest = LESSER(LESSER(h0, h1), h2);  /* > 0 needs a2 > 0 */
        T w3_pays = a3 - lam * (h0 * h1 + h0 * h2 + h1 * h2) * (1 + (T)SLACK);  /* > 0: raising w3 lowers f */
        T margin = LESSER(LESSER(room, -w3_pays), best + (T)SLACK * half_norm - bound);
        /* where the search on {0,1,2,3} ended on the face w3 = 0, it ended at a stationary point
         * of {0,1,2}: inside the bounds, this search starts there and ends in a sweep or two */
        T end0 = (T)c->found[0][g], end1 = (T)c->found[1][g], end2 = (T)c->found[2][g];
        int face = (c->flag[g] != 0) & (c->found[3][g] == 0.0) & (end0 > 0) & (end1 > 0) & (end2 > 0)
                 & (end0 * scale >= l0) & (end0 * scale <= h0) & (end1 * scale >= l1) & (end1 * scale <= h1)
                 & (end2 * scale >= l2) & (end2 * scale <= h2);
        c->flag[g] = (lowest > 0) & (margin > 0) ? 1 : 0;
        c->start[0][g] = face ? end0 : (h0 + l0) / 2 * top; c->start[1][g] = face ? end1 : (h1 + l1) / 2 * top;
        c->start[2][g] = face ? end2 : (h2 + l2) / 2 * top; c->start[3][g] = 0;
    }
}

/* The point a search of group g ends at; on {0,1,2}, where the sweeps ended on the boundary,
 * the interior stationary point instead when it is better. */
static void NAME(found)(struct NAME(chunk) *c, int g, const double *w, double lam, int support) {
    double a[4] = {c->a[0][g], c->a[1][g], c->a[2][g], c->a[3][g]}, branch[4];
    const double *found = w;
    if (support == 3 && (w[0] == 0.0 || w[1] == 0.0 || w[2] == 0.0) && plus_branch3(a, lam, branch)
        && objective(a, branch, lam) < objective(a, w, lam))
        found = branch;
    for (int i = 0; i < 4; ++i) c->found[i][g] = found[i];
}

/* best <- found for the flagged groups where found is strictly better. */
static void NAME(keep_better)(struct NAME(chunk) *c, int n, double lam) {
    for (int g = 0; g < n; ++g) {
        double a[4] = {c->a[0][g], c->a[1][g], c->a[2][g], c->a[3][g]};
        double w[4] = {c->found[0][g], c->found[1][g], c->found[2][g], c->found[3][g]};
        double obj = objective(a, w, lam);
        int better = (c->flag[g] != 0) & (obj < c->best_obj[g]);
        c->best_obj[g] = better ? obj : c->best_obj[g];
        c->improved[g] = better ? 1.0 : c->improved[g];
        for (int i = 0; i < 4; ++i) c->best[i][g] = better ? w[i] : c->best[i][g];
    }
}

/* Of the listed searches (search), those that need the second look: still moving, or ended on an
 * edge of {0,1,2} where the plus branch has a stationary point. That is plus_branch3's first test,
 * which most edge points fail, run here side by side; returns how many are left, listed first. */
static int NAME(needs_a_look)(struct NAME(chunk) *c, int rare, double lam) {
    double (*a)[CHUNK] = c->rare_a, *done = c->rare_done;
    for (int r = 0; r < rare; ++r) {
        int g = c->rare[r];
        a[0][r] = c->a[0][g]; a[1][r] = c->a[1][g]; a[2][r] = c->a[2][g];
    }
    for (int r = 0; r < rare; ++r) {
        double hi = 0.25 * a[2][r] * a[2][r];
        int no_branch = lam * plus_root(a[0][r], hi) * plus_root(a[1][r], hi) * plus_root(a[2][r], hi) - hi > 0.0;
        done[r] = (c->rare_sweeps[r] < 0) & no_branch;
    }
    int kept = 0;
    for (int r = 0; r < rare; ++r) {
        c->rare[kept] = c->rare[r];
        c->rare_sweeps[kept] = c->rare_sweeps[r];
        kept += done[r] == 0.0;
    }
    return kept;
}

/* Coordinate minimisation on support 3 or 4 of the flagged groups, each from its start point
 * until a sweep changes it by at most REL_TOL * a0, or polished after POLISH_AFTER sweeps.
 * LANES groups sweep side by side, and a lane whose group has ended takes the next one, so the
 * vector stays full; a lane's sweeps never see another lane's, so every result is independent of
 * the group's neighbours. Where a search ends is written as it ends; the few still moving (to
 * polish) or on an edge of {0,1,2} (see found) are listed and finished after the sweeps. */
static void NAME(search)(struct NAME(chunk) *c, int n, double lam, int support) {
    double a[4][LANES] = {{0}}, w[4][LANES] = {{0}}, change[LANES] = {0}, tol[LANES] = {0};
    int group[LANES], sweeps[LANES] = {0}, count = 0, next = 0, busy = 0, rare = 0;
    unsigned char done[LANES];
    for (int g = 0; g < n; ++g) {
        c->todo[count] = g;
        count += c->flag[g] != 0;
    }
    for (int l = 0; l < LANES; ++l) group[l] = -1;
    for (unsigned long long ended = ~0ull;;) {   /* at first every lane is free */
        while (ended) {                            /* only the lanes that ended: no branch per lane */
            int l = __builtin_ctzll(ended);
            ended &= ended - 1;
            int g = group[l];
            if (g >= 0) {
                int moving = change[l] > tol[l], edge = (support == 3) & ((w[0][l] == 0.0) | (w[1][l] == 0.0) | (w[2][l] == 0.0));
                for (int i = 0; i < 4; ++i) c->found[i][g] = w[i][l];
                c->rare[rare] = g;
                c->rare_sweeps[rare] = moving ? sweeps[l] : -1;
                rare += moving | edge;
                --busy;
            }
            g = group[l] = next < count ? c->todo[next++] : -1;
            if (g >= 0) {
                a[0][l] = c->a[0][g]; a[1][l] = c->a[1][g]; a[2][l] = c->a[2][g];
                a[3][l] = support == 4 ? c->a[3][g] : 0.0;
                w[0][l] = c->start[0][g]; w[1][l] = c->start[1][g]; w[2][l] = c->start[2][g];
                w[3][l] = support == 4 ? c->start[3][g] : 0.0;
                ++busy;
            } else {
                for (int i = 0; i < 4; ++i) a[i][l] = w[i][l] = 0.0;
            }
            tol[l] = REL_TOL * a[0][l];
            sweeps[l] = 0;
        }
        if (busy == 0) break;
        if (support == 4) {
            for (int l = 0; l < LANES; ++l) change[l] = sweep4(&a[0][l], &w[0][l], LANES, lam);
        } else {
            for (int l = 0; l < LANES; ++l) change[l] = sweep3(&a[0][l], &w[0][l], LANES, lam);
        }
        for (int l = 0; l < LANES; ++l) {
            ++sweeps[l];
            done[l] = (group[l] >= 0) & ((change[l] <= tol[l]) | (sweeps[l] >= POLISH_AFTER));
        }
        ended = lane_bits(done);
    }
    if (support == 3) rare = NAME(needs_a_look)(c, rare, lam);
    for (int r = 0; r < rare; ++r) {
        int g = c->rare[r];
        double target[4] = {c->a[0][g], c->a[1][g], c->a[2][g], support == 4 ? c->a[3][g] : 0.0};
        double point[4] = {c->found[0][g], c->found[1][g], c->found[2][g], c->found[3][g]};
        if (c->rare_sweeps[r] >= 0) polish(target, point, lam, REL_TOL * target[0], support, c->rare_sweeps[r]);
        NAME(found)(c, g, point, lam, support);
    }
    if (count > 0) NAME(keep_better)(c, n, lam);
}

/* dst = the best candidate of every group, at its positions with its signs; (a0, a1, 0, 0)
 * keeps the two largest entries as they are, and a group with at most two non-zeros is copied
 * as it is. One pass without branches, which the compiler vectorises; a zero is +0.0. */
static void NAME(write)(const struct NAME(chunk) *c, T *dst, int n) {
    for (int g = 0; g < n; ++g) {
        T b0 = (T)c->best[0][g], b1 = (T)c->best[1][g], b2 = (T)c->best[2][g], b3 = (T)c->best[3][g];
        int improved = c->improved[g] != 0.0, two_or_fewer = c->a[2][g] == 0;
#define OUTPUT(j) /* entry j of group g */                                                     \
        {                                                                                      \
            T z = c->z[4 * g + j], r = c->rank[j][g], top2 = r < 2 || two_or_fewer ? z : (T)0; \
            T best = r == 0 ? b0 : r == 1 ? b1 : r == 2 ? b2 : b3;                             \
            T value = best == 0 ? (T)0 : signbit(z) ? -best : best;                            \
            dst[4 * g + j] = improved ? value : top2;                                          \
        }
        OUTPUT(0) OUTPUT(1) OUTPUT(2) OUTPUT(3)
#undef OUTPUT
    }
}

/* Bytes of the workspace prox24 needs (the caller allocates it: ~0.3 MB, too big for a stack). */
int64_t NAME(prox24_workspace)(void) { return (int64_t)sizeof(struct NAME(chunk)); }

/* out[g] = prox(x[g]) for groups g in [0, groups); x may equal out (in place). Groups with at
 * most two non-zeros are their own prox and are left as they are. */
void NAME(prox24)(const T *x, T *out, int64_t groups, double lam, void *workspace) {
    struct NAME(chunk) *c = workspace;
    for (int64_t g0 = 0; g0 < groups; g0 += CHUNK) {
        int n = groups - g0 < CHUNK ? (int)(groups - g0) : CHUNK;
        const T *src = x + 4 * g0;
        T *dst = out + 4 * g0;
        NAME(sort_groups)(c, src, n);
        NAME(may_win4)(c, n, (T)lam);
        NAME(search)(c, n, lam, 4);
        NAME(may_win3)(c, n, (T)lam);
        NAME(search)(c, n, lam, 3);
        NAME(write)(c, dst, n);
    }
}

#undef LESSER
#undef GREATER
#undef ORDER
#undef FIRST
#undef BOUND4_ROUND
#undef BOUND3_ROUND
#undef SCALED_GROUP
#undef NAME
#undef JOIN
#undef JOIN_
