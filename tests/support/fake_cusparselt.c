/* A host-memory stand-in for the part of cuSPARSELt that proxsparse_ao/cusparselt.py calls.
 *
 * It keeps the real signatures (int64_t sizes, opaque 16-byte-aligned structs, enums as int) and
 * computes D = alpha * op(A) @ op(B) on the CPU in bf16/fp16 from what the descriptors say (rows,
 * columns, leading dimension, order), so a descriptor that disagrees with the data gives a wrong
 * product or INVALID_VALUE, as the library would. "Packed" A is the dense [rows, cols] matrix
 * (the tests' stand-in for torch._cslt_compress returns the dense weight). Counters and failure
 * switches let the tests see how often plans are built, searched and destroyed. */
#include <stdint.h>
#include <string.h>

enum { SUCCESS = 0, INVALID_VALUE = 3, INTERNAL_ERROR = 7, INSUFFICIENT_RESOURCES = 11 };
enum { R_16F = 2, R_16BF = 14, ORDER_COL = 1, ORDER_ROW = 2, OP_N = 0, OP_T = 1, COMPUTE_32F = 2 };

typedef struct { int kind; int64_t rows, cols, ld; int type, order; } Mat;            /* kind 1: structured */
typedef struct { const Mat *a, *b, *c, *d; int op_a, op_b; } Matmul;
typedef struct { const Matmul *matmul; } Plan;

int fake_plan_inits, fake_plan_destroys, fake_matmuls, fake_searches, fake_mat_destroys, fake_alg_destroys;
int fake_fail_search, fake_fail_plan_init;
int64_t fake_last_stream;

static int aligned(const void *p) { return ((uintptr_t)p) % 16 == 0; }

int cusparseLtInit(void *handle) { return aligned(handle) ? SUCCESS : INVALID_VALUE; }
int cusparseLtGetVersion(const void *handle, int *version) { (void)handle; *version = 800; return SUCCESS; }

static int describe(void *out, int kind, int64_t rows, int64_t cols, int64_t ld, uint32_t alignment, int type, int order) {
    if (!aligned(out) || alignment != 16 || (type != R_16F && type != R_16BF)) return INVALID_VALUE;
    if ((order == ORDER_ROW && ld < cols) || (order == ORDER_COL && ld < rows) || (order != ORDER_ROW && order != ORDER_COL))
        return INVALID_VALUE;
    Mat m = {kind, rows, cols, ld, type, order};
    memcpy(out, &m, sizeof m);
    return SUCCESS;
}

int cusparseLtStructuredDescriptorInit(const void *h, void *d, int64_t rows, int64_t cols, int64_t ld, uint32_t alignment,
                                       int type, int order, int sparsity) {
    (void)h;
    return sparsity == 0 ? describe(d, 1, rows, cols, ld, alignment, type, order) : INVALID_VALUE;
}
int cusparseLtDenseDescriptorInit(const void *h, void *d, int64_t rows, int64_t cols, int64_t ld, uint32_t alignment,
                                  int type, int order) {
    (void)h;
    return describe(d, 0, rows, cols, ld, alignment, type, order);
}
int cusparseLtMatDescriptorDestroy(const void *d) { (void)d; fake_mat_destroys++; return SUCCESS; }

int cusparseLtMatmulDescriptorInit(const void *h, void *out, int op_a, int op_b, const void *a, const void *b, const void *c,
                                   const void *d, int compute) {
    (void)h;
    const Mat *A = a, *B = b, *D = d;
    int64_t a_rows = op_a == OP_N ? A->rows : A->cols, a_cols = op_a == OP_N ? A->cols : A->rows;
    int64_t b_rows = op_b == OP_N ? B->rows : B->cols, b_cols = op_b == OP_N ? B->cols : B->rows;
    if (!aligned(out) || compute != COMPUTE_32F || A->kind != 1 || B->kind != 0 || c != d || a_cols != b_rows ||
        D->rows != a_rows || D->cols != b_cols)
        return INVALID_VALUE;
    Matmul m = {a, b, c, d, op_a, op_b};
    memcpy(out, &m, sizeof m);
    return SUCCESS;
}
int cusparseLtMatmulAlgSelectionInit(const void *h, void *alg, const void *matmul, int which) {
    (void)h; (void)which;
    memcpy(alg, &matmul, sizeof matmul);
    return SUCCESS;
}
int cusparseLtMatmulAlgSelectionDestroy(const void *alg) { (void)alg; fake_alg_destroys++; return SUCCESS; }
int cusparseLtMatmulPlanInit(const void *h, void *plan, const void *matmul, const void *alg) {
    (void)h; (void)alg;
    if (fake_fail_plan_init) return INSUFFICIENT_RESOURCES;
    Plan p = {matmul};
    memcpy(plan, &p, sizeof p);
    fake_plan_inits++;
    return SUCCESS;
}
int cusparseLtMatmulPlanDestroy(const void *plan) { (void)plan; fake_plan_destroys++; return SUCCESS; }
int cusparseLtMatmulGetWorkspace(const void *h, const void *plan, size_t *size) { (void)h; (void)plan; *size = 256; return SUCCESS; }

static float load(const Mat *m, const uint16_t *p, int64_t r, int64_t c) {
    uint16_t bits = m->order == ORDER_ROW ? p[r * m->ld + c] : p[r + c * m->ld];
    if (m->type == R_16BF) {
        uint32_t u = (uint32_t)bits << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    return (float)*(const _Float16 *)&bits;
}
static void store(const Mat *m, uint16_t *p, int64_t r, int64_t c, float v) {
    uint16_t bits;
    if (m->type == R_16BF) {
        uint32_t u;
        memcpy(&u, &v, 4);
        bits = (uint16_t)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
    } else {
        _Float16 h = (_Float16)v;
        memcpy(&bits, &h, 2);
    }
    if (m->order == ORDER_ROW) p[r * m->ld + c] = bits; else p[r + c * m->ld] = bits;
}

int cusparseLtMatmul(const void *h, const void *plan, const void *alpha, const void *a, const void *b, const void *beta,
                     const void *c, void *d, void *workspace, int64_t *streams, int32_t streams_count) {
    (void)h; (void)c;
    const Matmul *mm = ((const Plan *)plan)->matmul;
    if (workspace == 0 || streams == 0 || streams_count != 1 || *(const float *)beta != 0.0f || !aligned(a) || !aligned(b) ||
        !aligned(d))
        return INVALID_VALUE;
    fake_last_stream = streams[0];
    int64_t rows = mm->d->rows, cols = mm->d->cols, inner = mm->op_a == OP_N ? mm->a->cols : mm->a->rows;
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) {
            float sum = 0.0f;
            for (int64_t k = 0; k < inner; k++) {
                float x = mm->op_a == OP_N ? load(mm->a, a, i, k) : load(mm->a, a, k, i);
                float y = mm->op_b == OP_N ? load(mm->b, b, k, j) : load(mm->b, b, j, k);
                sum += x * y;
            }
            store(mm->d, d, i, j, *(const float *)alpha * sum);
        }
    fake_matmuls++;
    return SUCCESS;
}
int cusparseLtMatmulSearch(const void *h, void *plan, const void *alpha, const void *a, const void *b, const void *beta,
                           const void *c, void *d, void *workspace, int64_t *streams, int32_t streams_count) {
    if (fake_fail_search) return INTERNAL_ERROR;
    fake_searches++;
    return cusparseLtMatmul(h, plan, alpha, a, b, beta, c, d, workspace, streams, streams_count);
}
