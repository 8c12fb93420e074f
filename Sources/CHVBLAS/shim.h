#ifndef CHVBLAS_SHIM_H
#define CHVBLAS_SHIM_H
#include <cblas.h>
// Declared by OpenBLAS's headers when it was built with threading.
int openblas_get_num_threads(void);
void openblas_set_num_threads(int);
char *openblas_get_corename(void);
char *openblas_get_config(void);
#endif
