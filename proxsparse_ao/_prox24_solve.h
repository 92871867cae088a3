/* The per-chunk solver for one input type, included by _prox24.c once per type with
 *   T      the input type (float or double): sorting and the bounds run in it, a vector at a time;
 *   SLACK  how much a bound must win by, relative to the group's scale, to skip a search
 *          (covers rounding in T);
 *   REL_TOL the coordinate sweeps' stopping tolerance, relative to a0;
 *   NEWTON3_TOL the Newton step on {0,1,2} (scaled to a0 = 1) below which exact3 ends: its
 *          steps shrink quadratically, so the root is then far closer than T resolves.
 * The sweeps, the candidates' objectives and the choice between them run in double. */

#define JOIN_(a, b) a##_##b
#define JOIN(a, b) JOIN_(a, b)
#define NAME(x) JOIN(x, T)

static inline T NAME(lesser)(T x, T y) { return x < y ? x : y; }
static inline T NAME(greater)(T x, T y) { return x > y ? x : y; }
#define LESSER NAME(lesser)
#define GREATER NAME(greater)

/* CHUNK groups: a copy of the input, then [entry][group]: sorted magnitudes, the rank of each
 * position among them, where each search starts, and the best candidate so far (rounded to T, as
 * it is written; it counts only where improved says a search has bettered (a0, a1, 0, 0), and until
 * then holds where convex_blocks left the group); the groups a search takes, and those it ended
 * still moving, to polish; the groups set aside by kind; exact3's list of groups. */
struct NAME(chunk) {
    T z[4 * CHUNK], a[4][CHUNK], rank[4][CHUNK], start[4][CHUNK], flag[CHUNK];
    T best[4][CHUNK], improved[CHUNK];
    double best_obj[CHUNK], found[4][CHUNK];
    double resume[4][CHUNK];      /* where a convex group still moving after its block goes on */
    int todo[CHUNK], rare[CHUNK], rare_sweeps[CHUNK];
    T convex[CHUNK], top2[CHUNK];  /* is_convex, unless top2: at most two non-zeros, or the */
                                   /* top-2 table proves (a0, a1, 0, 0) the prox */
    T hard_ok[CHUNK], convex_ok[CHUNK];  /* which groups solve takes */
    T out[4 * CHUNK];             /* a set-aside chunk's results, before they go to their places */
    T stream_z[2][8 * CHUNK];     /* groups set aside, by kind (0 hard, 1 convex), until CHUNK of a kind */
    int64_t stream_at[2][2 * CHUNK];  /* where each set-aside group's result goes */
    int stream_count[2];
    unsigned char kind_is[CHUNK];
    /* what the pump has yet to ask for: the next chunk's input, then this chunk's output */
    const char *pump_read, *pump_read_end;
    char *pump_write, *pump_write_end;
    unsigned char open[CHUNK];    /* sort_groups: neither convex nor with at most two non-zeros */
    int open_blocks[CHUNK / LANES];  /* sort_groups: the blocks of LANES groups that hold such a group */
    double maybe3[CHUNK], face_stop[CHUNK];  /* {0,1,2} may have a local minimum; it keeps w3 = 0 */
    double root_a1[CHUNK], root_a2[CHUNK], root_x[CHUNK], root_k[CHUNK], root_step[CHUNK];  /* exact3's list (a0 = 1) */
    int root_group[CHUNK];
    /* exact3's ended groups, in the order they ended */
    double end_x[CHUNK], end_a1[CHUNK], end_a2[CHUNK], end_face[CHUNK];
    int end_group[CHUNK];
};

/* Ask the memory for the next `lines` cache lines of the pump's ranges: the next chunk's input, then
 * this chunk's output (for writing). The passes over a chunk's blocks of LANES groups (the convex
 * blocks, in four batches each, and the setting aside) ask for a block's share each, so the loads
 * run while they compute, and neither the next chunk's read nor this one's write waits on memory as
 * long. */
#define PUMP_SHARE (2 * 4 * LANES * (int)sizeof(T) / 64)  /* a block's input and output, in lines */
static inline void NAME(pump)(struct NAME(chunk) *c, int lines) {
    for (; lines > 0 && c->pump_read < c->pump_read_end; --lines, c->pump_read += 64)
        __builtin_prefetch(c->pump_read, 0, 3);
    for (; lines > 0 && c->pump_write < c->pump_write_end; --lines, c->pump_write += 64)
        __builtin_prefetch(c->pump_write, 1, 3);
}

/* Compare-exchange: the larger value first. */
#define ORDER(i, j)                                        \
    do {                                                   \
        T high = GREATER(v##i, v##j), low = LESSER(v##i, v##j); \
        v##i = high; v##j = low;                           \
    } while (0)

/* Entry k outranks entry j (k < j): larger magnitude, or equal and k first. */
#define FIRST(k, j) ((T)(m##k >= m##j))

/* 1 where lam (|z0| + |z1| + |z2| + |z3|) < CONVEX_BOUND, from the magnitudes m in the group's own
 * order: f is then strictly convex on the box [0, a] that holds every minimiser (its Hessian is at
 * least 1 - lam sum(w) times the identity), so coordinate minimisation on {0,1,2,3} from w = a
 * reaches the global minimum, whatever its support. Summed one way wherever it is asked, so that a
 * group is of one kind wherever it sits. */
static inline T NAME(is_convex)(T m0, T m1, T m2, T m3, T lam) {
    return lam * ((m0 + m1) + (m2 + m3)) < (T)CONVEX_BOUND ? 1 : 0;
}

/* 1 where the top-2 table proves (a0, a1, 0, 0) the prox of the sorted group a. Let
 * D = f(a0, a1, 0, 0) - min f >= 0, zero where the top two are the prox. D never grows when
 *   - lam grows: every f(w) grows (R >= 0) and f(a0, a1, 0, 0) does not (R = 0 there);
 *   - a0 or a1 grows: f(w) grows where w_i <= a_i, and elsewhere it is at least f at the old a of
 *     w with w_i lowered to a_i; f(a0, a1, 0, 0) stays (a2^2 + a3^2) / 2;
 *   - a2 or a3 shrinks: f(a0, a1, 0, 0) falls by (a_i^2 - a_i'^2) / 2, and no f(w), w_i >= 0,
 *     falls by more.
 * And D(c a, lam) = c^2 D(a, c lam). So the corner of a's cell, a0 / a1 rounded down and a2 / a1
 * rounded up (a3 raised to a2), proves it for a once lam a1 reaches the corner's threshold. The
 * ratios are rounded with room for their own rounding; indices stay in the table whatever a. */
static inline int NAME(top2_certified)(T a0, T a1, T a2, T lam) {
    const T up = (T)(TOP2_GRID * (1 + 1e-6)), most = (T)TOP2_GRID + (T)0.5;
    T per0 = a0 > 0 ? 1 / a0 : 0, per1 = a1 > 0 ? 1 / a1 : 0;
    int i0 = (int)LESSER(a1 * per0 * up, most) + 1;
    int i2 = (int)LESSER(a2 * per1 * up, most) + 1;
    return lam * a1 * (T)top2_table[i0 * TOP2_SIDE + i2] >= 1;
}

/* list <- the indices g < n where flag[g] is set, in order; returns how many. LANES flags at a
 * time become one word of bits, so the few flagged groups cost a step each and the rest none. */
static int NAME(flagged)(const T *flag, int n, int *list) {
    int count = 0;
    for (int b = 0; b < n; b += LANES) {
        unsigned char set[LANES];
        for (int l = 0; l < LANES; ++l) set[l] = b + l < n && flag[b + l] != 0;
        for (unsigned long long bits = lane_bits(set); bits; bits &= bits - 1)
            list[count++] = b + __builtin_ctzll(bits);
    }
    return count;
}

/* top2 <- 1 for the groups in [lo, hi) that the top-2 table settles (they are then not convex). */
static void NAME(settle_by_table)(struct NAME(chunk) *c, int lo, int hi, T lam) {
    for (int g = lo; g < hi; ++g) {
        int top2 = (c->top2[g] != 0) | NAME(top2_certified)(c->a[0][g], c->a[1][g], c->a[2][g], lam);
        c->top2[g] = top2 ? 1 : 0;
        c->convex[g] = top2 ? 0 : c->convex[g];
    }
}

/* Returns how many of the n groups are convex; top2s, how many are settled as (a0, a1, 0, 0): those
 * with at most two non-zeros and those the top-2 table proves. Where at least half the blocks of
 * LANES groups hold only convex groups and groups with at most two non-zeros (most at small lam),
 * the table is asked only in the other blocks: a convex group is solved exactly whatever its prox. */
static int NAME(sort_groups)(struct NAME(chunk) *c, const T *src, int n, T lam, int *top2s) {
    for (int i = 0; i < 4 * n; ++i) c->z[i] = src[i];
    int end = (n + LANES - 1) / LANES * LANES;
    for (int g = 0; g < end; ++g) {
        T m0 = 0, m1 = 0, m2 = 0, m3 = 0;
        if (g < n) {
            m0 = fabs(c->z[4 * g]); m1 = fabs(c->z[4 * g + 1]);
            m2 = fabs(c->z[4 * g + 2]); m3 = fabs(c->z[4 * g + 3]);
        }
        T f01 = FIRST(0, 1), f02 = FIRST(0, 2), f03 = FIRST(0, 3), f12 = FIRST(1, 2), f13 = FIRST(1, 3), f23 = FIRST(2, 3);
        c->rank[0][g] = (1 - f01) + (1 - f02) + (1 - f03);
        c->rank[1][g] = f01 + (1 - f12) + (1 - f13);
        c->rank[2][g] = f02 + f12 + (1 - f23);
        c->rank[3][g] = f03 + f13 + f23;
        T convex = NAME(is_convex)(m0, m1, m2, m3, lam);
        T v0 = m0, v1 = m1, v2 = m2, v3 = m3;
        ORDER(0, 1); ORDER(2, 3); ORDER(0, 2); ORDER(1, 3); ORDER(1, 2);
        c->a[0][g] = v0; c->a[1][g] = v1; c->a[2][g] = v2; c->a[3][g] = v3;
        T few = v2 == 0 ? 1 : 0;  /* at most two non-zeros: its own prox (also the padding past n) */
        c->top2[g] = few;
        c->convex[g] = (1 - few) * convex;
        c->open[g] = (1 - few) * (1 - convex) != 0;  /* what the table may settle */
        c->improved[g] = 0;
    }
    int blocks = end / LANES, open_count = 0;
    for (int b = 0; b < blocks; ++b) {
        c->open_blocks[open_count] = b;
        open_count += lane_bits(c->open + b * LANES) != 0;
    }
    if (2 * open_count <= blocks)
        for (int k = 0; k < open_count; ++k) {
            int b = c->open_blocks[k] * LANES;
            NAME(settle_by_table)(c, b, n - b < LANES ? n : b + LANES, lam);
        }
    else
        NAME(settle_by_table)(c, 0, n, lam);
    int convexes = 0, settled = 0;
    for (int g = 0; g < n; ++g) {
        convexes += c->convex[g] != 0;
        settled += c->top2[g] != 0;
    }
    *top2s = settled;
    return convexes;
}

/* Every group of the chunk, BLOCK consecutive groups side by side (nothing gathered, no lane
 * refills): from w = a, FLOAT_SWEEPS coordinate sweeps on {0,1,2,3} and a Newton step in float on
 * the group scaled to a0 near 1 (twice the lanes of a vector, while the point is still far from its
 * end; an fp32 group is scaled by the largest power of two not above a0, exactly and without a
 * division, an fp64 one to a0 = 1), then a Newton step and a sweep in double. Every group's point
 * goes to best, written whole (no group's earlier best is read back). For the convex groups taken
 * (convex_ok): where that sweep changed the point by at most REL_TOL a0, it is the prox (improved);
 * the others, listed in todo, go on in the lanes from there (resume, in double). Returns how many
 * it listed. Every convex group takes exactly these steps, so its result does not depend on its
 * neighbours. */
static int NAME(convex_blocks)(struct NAME(chunk) *c, int n, double lam) {
    int moving = 0;
    for (int g0 = 0; g0 < n; g0 += BLOCK) {
        NAME(pump)(c, PUMP_SHARE / 4);  /* a quarter of the block's share before each stage: */
        double a[4][BLOCK], w[4][BLOCK], change[BLOCK], unit[BLOCK];
        float af[4][BLOCK], wf[4][BLOCK], lf[BLOCK];
        int m = n - g0 < BLOCK ? n - g0 : BLOCK;
        if (m == BLOCK) {
            for (int i = 0; i < 4; ++i)
                for (int j = 0; j < BLOCK; ++j) a[i][j] = (double)c->a[i][g0 + j];
        } else {
            for (int i = 0; i < 4; ++i)
                for (int j = 0; j < BLOCK; ++j) a[i][j] = j < m ? (double)c->a[i][g0 + j] : 0.0;
        }
        if (sizeof(T) == sizeof(float)) {  /* unit: a0 with its mantissa dropped */
            for (int j = 0; j < BLOCK; ++j) {
                uint64_t unit_bits, per_bits;
                double per;
                memcpy(&unit_bits, &a[0][j], 8);
                unit_bits &= 0x7ff0000000000000ull;
                per_bits = 0x7fe0000000000000ull - unit_bits;  /* 1 / unit (a0 = 0: unit 0, af 0) */
                memcpy(&unit[j], &unit_bits, 8);
                memcpy(&per, &per_bits, 8);
                for (int i = 0; i < 4; ++i) af[i][j] = wf[i][j] = (float)(a[i][j] * per);
                lf[j] = (float)(lam * unit[j]);
            }
        } else {  /* a double a0 may be subnormal, where its exponent bits say nothing */
            for (int j = 0; j < BLOCK; ++j) {
                double scale = a[0][j] > 0.0 ? 1.0 / a[0][j] : 0.0;
                for (int i = 0; i < 4; ++i) af[i][j] = wf[i][j] = (float)(a[i][j] * scale);
                lf[j] = (float)(lam * a[0][j]);
                unit[j] = a[0][j];
            }
        }
        for (int k = 0; k < FLOAT_SWEEPS; ++k) {
            for (int j = 0; j < BLOCK; ++j) {
                float w0 = wf[0][j], w1 = wf[1][j], w2 = wf[2][j], l = lf[j];
                float n3 = posf(af[3][j] - l * (w0 * w1 + w0 * w2 + w1 * w2));
                float n2 = posf(af[2][j] - l * ((w0 + w1) * n3 + w0 * w1));
                float n1 = posf(af[1][j] - l * (w0 * (n2 + n3) + n2 * n3));
                float n0 = posf(af[0][j] - l * (n1 * (n2 + n3) + n2 * n3));
                wf[0][j] = n0; wf[1][j] = n1; wf[2][j] = n2; wf[3][j] = n3;
            }
        }
        NAME(pump)(c, PUMP_SHARE / 4);  /* a few requests at a time keep the core going */
        for (int j = 0; j < BLOCK; ++j) newton4f(&af[0][j], &wf[0][j], BLOCK, lf[j]);
        for (int i = 0; i < 4; ++i)
            for (int j = 0; j < BLOCK; ++j) w[i][j] = (double)wf[i][j] * unit[j];
        NAME(pump)(c, PUMP_SHARE / 4);
        for (int j = 0; j < BLOCK; ++j) newton4(&a[0][j], &w[0][j], BLOCK, lam);
        NAME(pump)(c, PUMP_SHARE / 4);
        for (int j = 0; j < BLOCK; ++j) change[j] = sweep4(&a[0][j], &w[0][j], BLOCK, lam);
        for (int i = 0; i < 4; ++i)
            for (int j = 0; j < m; ++j) c->best[i][g0 + j] = (T)w[i][j];
        unsigned char on[BLOCK] = {0};
        for (int j = 0; j < m; ++j) {
            int g = g0 + j;
            T take = c->convex_ok[g], ended = change[j] <= REL_TOL * a[0][j] ? 1 : 0;
            c->improved[g] = take * ended;   /* the global minimum: no candidate beats it */
            on[j] = take * (1 - ended) != 0;
        }
        for (unsigned long long bits = lane_bits(on); bits; bits &= bits - 1) {
            int j = __builtin_ctzll(bits), g = g0 + j;
            for (int i = 0; i < 4; ++i) c->resume[i][g] = w[i][j];
            c->todo[moving++] = g;
        }
    }
    return moving;
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

/* flag[g] = 1 where a local minimum on {0,1,2,3} may beat the best candidate and {0,1,2} has a
 * local minimum (maybe3: a 4-support prox was never seen without one); its search starts at the
 * middle of the bounds. */
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
        c->flag[g] = (lowest > 0) & (margin > 0) & (c->hard_ok[g] != 0) & (c->maybe3[g] != 0.0) ? 1 : 0;
        c->start[0][g] = (h0 + l0) / 2 * top; c->start[1][g] = (h1 + l1) / 2 * top;
        c->start[2][g] = (h2 + l2) / 2 * top; c->start[3][g] = (h3 + l3) / 2 * top;
    }
}

#define BOUND3_ROUND                      \
    l0 = GREATER(a0 - lam * h1 * h2, 0);  \
    l1 = GREATER(a1 - lam * h0 * h2, 0);  \
    l2 = GREATER(a2 - lam * h0 * h1, 0);  \
    h0 = LESSER(h0, a0 - lam * l1 * l2);  \
    h1 = LESSER(h1, a1 - lam * l0 * l2);  \
    h2 = LESSER(h2, a2 - lam * l0 * l1);

/* flag[g] = 1 where a local minimum on {0,1,2} may exist and beat the best candidate;
 * maybe3[g] = 1 where one may exist at all (its bounds are not empty). start[2][g] is the upper
 * bound on w2, where exact3's Newton iteration starts (scaled to a0 = 1). */
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
        int maybe = (lowest > 0) & (room > 0);
        c->flag[g] = maybe & (margin > 0) & (c->hard_ok[g] != 0) ? 1 : 0;
        c->maybe3[g] = maybe ? 1.0 : 0.0;
        c->face_stop[g] = 0.0;
        c->start[2][g] = LESSER(h2 + (T)SLACK, a2);
    }
}

/* One Newton step for every listed group on phi(x) = (a0 + s0)(a1 + s1) - 4 (a2 - x) / lam,
 * s_i = sqrt(a_i^2 - 4 x (a2 - x)): its roots are the stationary points of {0,1,2} with w2 = x,
 * w_i = (a_i + s_i) / 2, and the largest is the local minimum. phi is convex, so from the right
 * of that root the steps fall to it without passing it; a point where phi > 0 and phi' <= 0, or
 * a step below 0, shows there is none (x = -1). Never contracted, so a group gets the same bits
 * wherever it is listed. */
__attribute__((optimize("fp-contract=off")))
static void NAME(newton3)(struct NAME(chunk) *c, int count) {
    double *x = c->root_x, *k = c->root_k, *last = c->root_step, a0 = 1.0;
    for (int r = 0; r < count; ++r) {
        double xr = x[r], a1 = c->root_a1[r], a2 = c->root_a2[r];
        double q = 4.0 * xr * (a2 - xr);
        double s0 = sqrt(pos(a0 * a0 - q)), s1 = sqrt(pos(a1 * a1 - q));
        double p0 = a0 + s0, p1 = a1 + s1;
        s0 = s0 > 1e-150 ? s0 : 1e-150; s1 = s1 > 1e-150 ? s1 : 1e-150;
        double phi = p0 * p1 - (a2 - xr) * k[r];
        double half_dq = 2.0 * (a2 - 2.0 * xr);
        double slope = k[r] * (s0 * s1) - half_dq * (p1 * s1 + p0 * s0);   /* phi' s0 s1 */
        double step = phi > 0.0 ? phi * (s0 * s1) / slope : 0.0;
        int none = (xr < 0.0) | ((phi > 0.0) & !(slope > 0.0)) | (xr - step < 0.0);
        x[r] = none ? -1.0 : xr - step;
        last[r] = none ? 0.0 : step;
    }
}

/* found <- the local minimum on {0,1,2} of each of exact3's `ended` groups from its w2 = x (scaled
 * by top), or zeros where there is none (x < 0); maybe3 says which, face_stop whether it holds w3 = 0
 * (a3 <= lam e2). */
static void NAME(take_roots)(struct NAME(chunk) *c, int ended, double lam) {
    double *w0 = c->end_x, *w1 = c->end_a1, *w2 = c->end_a2, *face = c->end_face;  /* in place */
    for (int e = 0; e < ended; ++e) {  /* a vector at a time */
        int g = c->end_group[e];
        double x = c->end_x[e], a1 = c->end_a1[e], a2 = c->end_a2[e];
        double top = c->a[0][g], a3 = c->a[3][g], q = 4.0 * x * (a2 - x);
        int some = x > 0.0;
        double v0 = some ? top * 0.5 * (1.0 + sqrt(pos(1.0 - q))) : 0.0;
        double v1 = some ? top * 0.5 * (a1 + sqrt(pos(a1 * a1 - q))) : 0.0;
        double v2 = some ? top * x : 0.0;
        face[e] = some & (a3 <= lam * (v0 * v1 + v0 * v2 + v1 * v2)) ? 1.0 : 0.0;
        w0[e] = v0; w1[e] = v1; w2[e] = v2;
    }
    for (int e = 0; e < ended; ++e) {
        int g = c->end_group[e];
        c->found[0][g] = w0[e]; c->found[1][g] = w1[e]; c->found[2][g] = w2[e]; c->found[3][g] = 0.0;
        c->maybe3[g] = w2[e] > 0.0 ? 1.0 : 0.0;  /* w2 = top x > 0 exactly where x > 0 */
        c->face_stop[g] = face[e];
    }
}

/* The local minimum on {0,1,2} of every flagged group, exactly (see newton3), solved scaled to
 * a0 = 1: two steps for every group still listed, then those that have ended leave the list for
 * the list of ended ones, whose points take_roots finds together at the end. */
static void NAME(exact3)(struct NAME(chunk) *c, int n, double lam) {
    int count = NAME(flagged)(c->flag, n, c->root_group);
    for (int r = 0; r < count; ++r) {
        int g = c->root_group[r];
        double top = c->a[0][g], scale = 1.0 / top;
        c->root_a1[r] = c->a[1][g] * scale; c->root_a2[r] = c->a[2][g] * scale;
        c->root_k[r] = 4.0 / (lam * top);
        c->root_x[r] = (double)c->start[2][g];
    }
    int ended = 0;
    for (int steps = 0; count > 0; steps += 2) {
        NAME(newton3)(c, count);
        NAME(newton3)(c, count);
        int kept = 0, last = steps + 2 >= NEWTON3_MAX;
        for (int r = 0; r < count; ++r) {  /* each group written to both lists, counted in one */
            int keep = (fabs(c->root_step[r]) > NEWTON3_TOL) & !last, g = c->root_group[r];
            double x = c->root_x[r], a1 = c->root_a1[r], a2 = c->root_a2[r], k = c->root_k[r];
            c->end_group[ended] = g; c->end_x[ended] = x; c->end_a1[ended] = a1; c->end_a2[ended] = a2;
            c->root_group[kept] = g; c->root_x[kept] = x; c->root_a1[kept] = a1; c->root_a2[kept] = a2;
            c->root_k[kept] = k;
            kept += keep;
            ended += 1 - keep;
        }
        count = kept;
    }
    NAME(take_roots)(c, ended, lam);
}

/* best <- found for the flagged groups where found is strictly better. */
static void NAME(keep_better)(struct NAME(chunk) *c, int n, double lam) {
    for (int g = 0; g < n; ++g) {
        double a[4] = {c->a[0][g], c->a[1][g], c->a[2][g], c->a[3][g]};
        double w[4] = {c->found[0][g], c->found[1][g], c->found[2][g], c->found[3][g]};
        double obj = objective(a, w, lam);
        int better = (c->flag[g] != 0) & (obj < c->best_obj[g]);
        c->best_obj[g] = better ? obj : c->best_obj[g];
        c->improved[g] = better ? 1 : c->improved[g];
        for (int i = 0; i < 4; ++i) c->best[i][g] = better ? (T)w[i] : c->best[i][g];
    }
}

/* Coordinate minimisation on {0,1,2,3} of the first count groups in todo, each from its start point
 * (or, with resume, from where its block sweeps left it (resume), counted as BLOCK_SWEEPS sweeps
 * done) until a sweep changes it by at most REL_TOL * a0, or until it reaches the face w3 = 0 where
 * face_stop says the minimum there holds (the search would end at that minimum, already a
 * candidate), or polished after POLISH_AFTER sweeps. Up to LANES groups sweep side by side, and a
 * lane whose group has ended takes the next one, so the vector stays full; a lane's sweeps never see
 * another lane's, so every result is independent of the group's neighbours. Where a search ends is
 * written as it ends; the few still moving are listed and polished after the sweeps. */
static void NAME(search)(struct NAME(chunk) *c, int n, int count, double lam, int resume) {
    double a[4][LANES] = {{0}}, w[4][LANES] = {{0}}, change[LANES] = {0}, tol[LANES] = {0}, face[LANES] = {0};
    int group[LANES], sweeps[LANES] = {0}, next = 0, busy = 0, rare = 0;
    unsigned char done[LANES] = {0};
    for (int l = 0; l < LANES; ++l) group[l] = -1;
    /* a few groups (the convex groups still moving after their blocks) sweep in as few lanes as
     * hold them, rounded up to 8 (a vector of doubles), not in all LANES */
    int width = count >= LANES ? LANES : (count + 7) / 8 * 8;
    for (unsigned long long ended = width == LANES ? ~0ull : (1ull << width) - 1;;) {  /* all free */
        while (ended) {                            /* only the lanes that ended: no branch per lane */
            int l = __builtin_ctzll(ended);
            ended &= ended - 1;
            int g = group[l];
            if (g >= 0) {
                int moving = (change[l] > tol[l]) & !((face[l] != 0.0) & (w[3][l] == 0.0));
                for (int i = 0; i < 4; ++i) c->found[i][g] = w[i][l];
                c->rare[rare] = g;
                c->rare_sweeps[rare] = sweeps[l];
                rare += moving;
                --busy;
            }
            g = group[l] = next < count ? c->todo[next++] : -1;
            if (g >= 0) {
                for (int i = 0; i < 4; ++i) {
                    a[i][l] = c->a[i][g];
                    w[i][l] = resume ? c->resume[i][g] : c->start[i][g];
                }
                ++busy;
            } else {
                for (int i = 0; i < 4; ++i) a[i][l] = w[i][l] = 0.0;
            }
            tol[l] = REL_TOL * a[0][l];
            face[l] = g >= 0 && !resume ? c->face_stop[g] : 0.0;
            sweeps[l] = resume ? BLOCK_SWEEPS : 0;
        }
        if (busy == 0) break;
        for (int l = 0; l < width; ++l) change[l] = sweep4(&a[0][l], &w[0][l], LANES, lam);
        for (int l = 0; l < width; ++l) {
            ++sweeps[l];
            done[l] = (group[l] >= 0) & ((change[l] <= tol[l]) | (sweeps[l] >= POLISH_AFTER) | ((face[l] != 0.0) & (w[3][l] == 0.0)));
        }
        ended = lane_bits(done);
    }
    for (int r = 0; r < rare; ++r) {
        int g = c->rare[r];
        double target[4] = {c->a[0][g], c->a[1][g], c->a[2][g], c->a[3][g]};
        double point[4] = {c->found[0][g], c->found[1][g], c->found[2][g], c->found[3][g]};
        polish(target, point, lam, REL_TOL * target[0], c->rare_sweeps[r]);
        for (int i = 0; i < 4; ++i) c->found[i][g] = point[i];
    }
    if (count > 0 && !resume) NAME(keep_better)(c, n, lam);
    for (int r = 0; resume && r < count; ++r) {  /* a convex group's end is its global minimum */
        int g = c->todo[r];
        for (int i = 0; i < 4; ++i) c->best[i][g] = (T)c->found[i][g];
        c->improved[g] = 1;
    }
}

/* dst = the best candidate of every group, at its positions with its signs; (a0, a1, 0, 0)
 * keeps the two largest entries as they are, and a group with at most two non-zeros is copied
 * as it is. One pass without branches, which the compiler vectorises; a zero is +0.0. */
static void NAME(write)(const struct NAME(chunk) *c, T *dst, int n) {
    for (int g = 0; g < n; ++g) {
        T b0 = c->best[0][g], b1 = c->best[1][g], b2 = c->best[2][g], b3 = c->best[3][g];
        int improved = c->improved[g] != 0, two_or_fewer = c->a[2][g] == 0;
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

/* write, where no group was solved: every group (a0, a1, 0, 0), or as it is with at most two
 * non-zeros (most chunks at large lam, and every chunk that sets all its open groups aside). */
static void NAME(write_top2)(const struct NAME(chunk) *c, T *dst, int n) {
    for (int g = 0; g < n; ++g) {
        T a2 = c->a[2][g];
#define OUTPUT(j) { T z = c->z[4 * g + j], r = c->rank[j][g]; dst[4 * g + j] = r < 2 || a2 == 0 ? z : (T)0; }
        OUTPUT(0) OUTPUT(1) OUTPUT(2) OUTPUT(3)
#undef OUTPUT
    }
}

/* Bytes of the workspace prox24 needs (the caller allocates it: 0.8 MB for float, 1.2 MB for
 * double, too big for a stack). */
int64_t NAME(prox24_workspace)(void) { return (int64_t)sizeof(struct NAME(chunk)); }

/* The n groups that sort_groups took, solved: kind < 0 all of them, else only those of that kind
 * (0 hard, 1 convex, 2 none; the others are written as (a0, a1, 0, 0)). The results go to dst, or,
 * where at is given, group g's to out + 4 at[g]. The convex groups go first: their blocks write best
 * for every group of the chunk, and the other searches then overwrite it only where they win. */
static void NAME(solve)(struct NAME(chunk) *c, int n, double lam, int kind, T *dst, const int64_t *at, T *out) {
    int hard = 0, convex = 0;
    T take_hard = kind < 0 || kind == 0, take_convex = kind < 0 || kind == 1;
    for (int g = 0; g < n; ++g) {  /* settled groups (top2, which includes a2 = 0) are never convex */
        T is = c->convex[g], open = 1 - c->top2[g];
        c->hard_ok[g] = take_hard * open * (1 - is);
        c->convex_ok[g] = take_convex * is;
        hard += (int)c->hard_ok[g];
        convex += (int)c->convex_ok[g];
    }
    if (convex > 0) {
        int moving = NAME(convex_blocks)(c, n, lam);
        NAME(search)(c, n, moving, lam, 1);
    }
    if (hard > 0) {
        for (int g = 0; g < n; ++g) {  /* f(a0, a1, 0, 0), the candidate to beat */
            double a2 = c->a[2][g], a3 = c->a[3][g];
            c->best_obj[g] = 0.5 * (a2 * a2 + a3 * a3);
        }
        NAME(may_win3)(c, n, (T)lam);
        NAME(exact3)(c, n, lam);
        NAME(keep_better)(c, n, lam);
        NAME(may_win4)(c, n, (T)lam);
        NAME(search)(c, n, NAME(flagged)(c->flag, n, c->todo), lam, 0);
    }
    if (at == NULL && hard == 0 && convex == 0) {
        NAME(write_top2)(c, dst, n);
    } else if (at == NULL) {
        NAME(write)(c, dst, n);
    } else {
        NAME(write)(c, c->out, n);
        for (int g = 0; g < n; ++g) memcpy(out + 4 * at[g], c->out + 4 * g, 4 * sizeof(T));
    }
}

/* Solve the first CHUNK groups set aside of one kind (all, if `all`), and keep the rest. */
static void NAME(flush)(struct NAME(chunk) *c, int kind, double lam, T *out, int all) {
    while (c->stream_count[kind] >= (all ? 1 : CHUNK)) {
        int n = c->stream_count[kind] < CHUNK ? c->stream_count[kind] : CHUNK;
        int top2s;
        NAME(sort_groups)(c, c->stream_z[kind], n, (T)lam, &top2s);
        NAME(solve)(c, n, lam, -1, NULL, c->stream_at[kind], out);
        int rest = c->stream_count[kind] - n;
        memmove(c->stream_z[kind], c->stream_z[kind] + 4 * n, 4 * rest * sizeof(T));
        memmove(c->stream_at[kind], c->stream_at[kind] + n, rest * sizeof(int64_t));
        c->stream_count[kind] = rest;
    }
}

/* out[g] = prox(x[g]) for groups g in [0, groups); x may equal out (in place). Groups with at
 * most two non-zeros are their own prox and are left as they are, and those the top-2 table
 * settles are written as such. Of the others, a chunk solves in place the kind (convex or not)
 * that makes up at least 7/8 of it, if one does, and sets the rest aside, to be solved with others
 * of their kind, so that every pass runs over groups of one kind. Returns -1, or the index in x of the first entry that is not
 * finite: each chunk is checked as it is read, and the call stops there (out is then only partly
 * written, so an in-place caller checks first). */
int64_t NAME(prox24)(const T *x, T *out, int64_t groups, double lam, void *workspace) {
    struct NAME(chunk) *c = workspace;
    c->stream_count[0] = c->stream_count[1] = 0;
    c->pump_read = c->pump_read_end = NULL;
    c->pump_write = c->pump_write_end = NULL;
    for (int64_t g0 = 0; g0 < groups; g0 += CHUNK) {
        int n = groups - g0 < CHUNK ? (int)(groups - g0) : CHUNK, top2s;
        int64_t bad = NAME(first_nonfinite)(x + 4 * g0, 4 * n);
        if (bad >= 0) return 4 * g0 + bad;
        int convex = NAME(sort_groups)(c, x + 4 * g0, n, (T)lam, &top2s);
        int count[2] = {n - top2s - convex, convex};
        int kind = 8 * count[0] >= 7 * n ? 0 : 8 * count[1] >= 7 * n ? 1 : 2;
        int64_t ahead = groups - g0 - n < CHUNK ? groups - g0 - n : CHUNK;  /* the next chunk */
        c->pump_read = (const char *)(x + 4 * (g0 + n));
        c->pump_read_end = (const char *)(x + 4 * (g0 + n + ahead));
        c->pump_write = (char *)(out + 4 * g0);
        c->pump_write_end = (char *)(out + 4 * (g0 + n));
        if (top2s < n) {
            for (int side = 0; side < 2; ++side) {
                if (side == kind || count[side] == 0) continue;
                int end = (n + LANES - 1) / LANES * LANES;
                for (int g = 0; g < end; ++g)
                    c->kind_is[g] = g < n && c->top2[g] == 0 && (c->convex[g] != 0) == side;
                for (int b = 0; b < end; b += LANES) {
                    NAME(pump)(c, kind == 1 ? 0 : PUMP_SHARE);  /* convex blocks pump as they go */
                    for (unsigned long long bits = lane_bits(c->kind_is + b); bits; bits &= bits - 1) {
                        int g = b + __builtin_ctzll(bits), k = c->stream_count[side]++;
                        memcpy(c->stream_z[side] + 4 * k, c->z + 4 * g, 4 * sizeof(T));
                        c->stream_at[side][k] = g0 + g;
                    }
                }
            }
        }
        NAME(solve)(c, n, lam, kind, out + 4 * g0, NULL, out);
        c->pump_read = c->pump_read_end;  /* what is left unasked stays so */
        c->pump_write = c->pump_write_end;
        NAME(flush)(c, 0, lam, out, 0);
        NAME(flush)(c, 1, lam, out, 0);
    }
    NAME(flush)(c, 0, lam, out, 1);
    NAME(flush)(c, 1, lam, out, 1);
    return -1;
}

#undef LESSER
#undef GREATER
#undef ORDER
#undef FIRST
#undef BOUND4_ROUND
#undef BOUND3_ROUND
#undef SCALED_GROUP
#undef PUMP_SHARE
#undef NAME
#undef JOIN
#undef JOIN_
