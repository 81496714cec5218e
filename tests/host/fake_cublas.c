/* A stand-in for libcublas on the host, for the tests of fcgpu.cuda.blas without a GPU.
 *
 * It exports the entry points fcgpu calls, with cuBLAS's C signatures
 * (cublas_api.h), and does what the cuBLAS documentation says they do, on host memory
 * (the tests' stand-in for CuPy keeps "device" arrays in host memory):
 *
 *   cublasCreate_v2, cublasSetStream_v2 (which resets the workspace to the library's
 *   own pool, as documented), cublasSetWorkspace_v2 (256-byte aligned, else
 *   CUBLAS_STATUS_INVALID_VALUE), cublasGemmEx (column-major
 *   C = alpha op(A) op(B) + beta C, with its argument checks: CUBLAS_STATUS_INVALID_VALUE
 *   for bad sizes, leading dimensions or operations, CUBLAS_STATUS_NOT_SUPPORTED for
 *   type combinations it does not take), cublasGetStatusString.
 *
 * Compute types: CUBLAS_COMPUTE_32F and _64F accumulate in double (a stand-in needs
 * no particular rounding, only determinism); CUBLAS_COMPUTE_32F_FAST_TF32 first rounds
 * both inputs to TF32 (10 mantissa bits, to nearest, ties away from zero), so a test
 * can tell whether TF32 was asked for.
 *
 * Stream capture, as CUDA has it: fake_cublas_set_capturing(stream, 1) marks a stream
 * as capturing; a product on it is recorded but not computed, and is refused
 * (CUBLAS_STATUS_NOT_SUPPORTED) unless the handle has a user workspace, the condition
 * under which cuBLAS allocates nothing inside a capture. Every product call is logged
 * (fake_cublas_log_*, alpha and beta as the bits of doubles) so that a replay can be
 * compared with the capture, or run from the log.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define STATUS_SUCCESS 0
#define STATUS_NOT_INITIALIZED 1
#define STATUS_INVALID_VALUE 7
#define STATUS_NOT_SUPPORTED 15

#define MAGIC 0x6375626cu

typedef struct {
  unsigned magic;
  void* stream;
  void* workspace;
  size_t workspace_bytes;
} Handle;

#define MAX_CAPTURING 16
static void* capturing[MAX_CAPTURING];

#define LOG_FIELDS 18
#define LOG_MAX 4096
static long long log_rows[LOG_MAX][LOG_FIELDS];
static int log_size = 0;
static int computed = 0;

static int is_capturing(void* stream) {
  for (int i = 0; i < MAX_CAPTURING; ++i)
    if (stream != NULL && capturing[i] == stream) return 1;
  return 0;
}

void fake_cublas_set_capturing(void* stream, int flag) {
  for (int i = 0; i < MAX_CAPTURING; ++i) {
    if (capturing[i] == stream) capturing[i] = NULL;
  }
  if (!flag) return;
  for (int i = 0; i < MAX_CAPTURING; ++i) {
    if (capturing[i] == NULL) {
      capturing[i] = stream;
      return;
    }
  }
  abort();
}

int fake_cublas_log_size(void) { return log_size; }
int fake_cublas_computed(void) { return computed; }
void fake_cublas_log_clear(void) { log_size = 0; }
int fake_cublas_log_get(int i, long long* out) {
  if (i < 0 || i >= log_size) return 1;
  memcpy(out, log_rows[i], sizeof(log_rows[i]));
  return 0;
}

int cublasCreate_v2(Handle** handle) {
  if (handle == NULL) return STATUS_INVALID_VALUE;
  Handle* h = (Handle*)calloc(1, sizeof(Handle));
  if (h == NULL) return 3; /* CUBLAS_STATUS_ALLOC_FAILED */
  h->magic = MAGIC;
  *handle = h;
  return STATUS_SUCCESS;
}

int cublasDestroy_v2(Handle* h) {
  if (h == NULL || h->magic != MAGIC) return STATUS_NOT_INITIALIZED;
  h->magic = 0;
  free(h);
  return STATUS_SUCCESS;
}

int cublasSetStream_v2(Handle* h, void* stream) {
  if (h == NULL || h->magic != MAGIC) return STATUS_NOT_INITIALIZED;
  h->stream = stream;
  h->workspace = NULL; /* "unconditionally resets the workspace to the default pool" */
  h->workspace_bytes = 0;
  return STATUS_SUCCESS;
}

int cublasSetWorkspace_v2(Handle* h, void* workspace, size_t bytes) {
  if (h == NULL || h->magic != MAGIC) return STATUS_NOT_INITIALIZED;
  if (((uintptr_t)workspace) % 256 != 0) return STATUS_INVALID_VALUE;
  h->workspace = workspace;
  h->workspace_bytes = bytes;
  return STATUS_SUCCESS;
}

const char* cublasGetStatusString(int status) {
  switch (status) {
    case STATUS_SUCCESS: return "the operation completed successfully";
    case STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    default: return "unknown error";
  }
}

static double tf32(double x) {
  float f = (float)x;
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) { /* finite: keep 10 mantissa bits */
    u += 0x00001000u;                     /* to nearest, ties away from zero */
    u &= 0xffffe000u;
  }
  memcpy(&f, &u, 4);
  return f;
}

static double element(const void* p, int type, long long idx, int round_tf32) {
  double v = type == 0 ? (double)((const float*)p)[idx] : ((const double*)p)[idx];
  return round_tf32 ? tf32(v) : v;
}

int cublasGemmEx(Handle* h, int transa, int transb, int m, int n, int k, const void* alpha,
                 const void* A, int Atype, int lda, const void* B, int Btype, int ldb,
                 const void* beta, void* C, int Ctype, int ldc, int computeType, int algo) {
  if (h == NULL || h->magic != MAGIC) return STATUS_NOT_INITIALIZED;
  if ((transa != 0 && transa != 1) || (transb != 0 && transb != 1)) return STATUS_INVALID_VALUE;
  if (m < 0 || n < 0 || k < 0) return STATUS_INVALID_VALUE;
  const int arows = transa == 0 ? m : k, brows = transb == 0 ? k : n;
  if (lda < (arows > 1 ? arows : 1) || ldb < (brows > 1 ? brows : 1) || ldc < (m > 1 ? m : 1))
    return STATUS_INVALID_VALUE;
  if (Atype != Btype || Atype != Ctype || (Atype != 0 && Atype != 1)) return STATUS_NOT_SUPPORTED;
  const int f32 = Atype == 0;
  if (f32 ? (computeType != 68 && computeType != 69 && computeType != 77)
          : (computeType != 70 && computeType != 71))
    return STATUS_NOT_SUPPORTED;
  if (algo != -1) return STATUS_NOT_SUPPORTED;
  if (alpha == NULL || beta == NULL || (m && n && (C == NULL || (k && (A == NULL || B == NULL)))))
    return STATUS_INVALID_VALUE;
  const int cap = is_capturing(h->stream);
  if (cap && h->workspace == NULL) return STATUS_NOT_SUPPORTED;
  const double al = f32 ? *(const float*)alpha : *(const double*)alpha;
  const double be = f32 ? *(const float*)beta : *(const double*)beta;
  if (log_size < LOG_MAX) {
    long long* r = log_rows[log_size++];
    long long ab[2];
    memcpy(&ab[0], &al, 8);
    memcpy(&ab[1], &be, 8);
    long long row[LOG_FIELDS] = {transa, transb, m, n, k, (long long)(uintptr_t)A, lda,
                                 (long long)(uintptr_t)B, ldb, (long long)(uintptr_t)C, ldc,
                                 Atype, computeType, (long long)(uintptr_t)h->stream,
                                 (long long)h->workspace_bytes, cap, ab[0], ab[1]};
    memcpy(r, row, sizeof(row));
  }
  if (cap) return STATUS_SUCCESS; /* recorded into the graph, not run */
  const int round = computeType == 77;
  for (int j = 0; j < n; ++j) {
    for (int i = 0; i < m; ++i) {
      double acc = 0.0;
      for (int l = 0; l < k; ++l) {
        const long long ia = transa == 0 ? i + (long long)l * lda : l + (long long)i * lda;
        const long long ib = transb == 0 ? l + (long long)j * ldb : j + (long long)l * ldb;
        acc += element(A, Atype, ia, round) * element(B, Btype, ib, round);
      }
      const long long ic = i + (long long)j * ldc;
      const double old = be == 0.0 ? 0.0 : element(C, Ctype, ic, 0);
      const double v = al * acc + be * old;
      if (f32) ((float*)C)[ic] = (float)v;
      else ((double*)C)[ic] = v;
    }
  }
  computed++;
  return STATUS_SUCCESS;
}
