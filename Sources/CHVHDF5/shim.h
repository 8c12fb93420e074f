// Thin shim over HDF5 1.10 (serial, thread-safe build). The predefined type, property-class
// and flag identifiers are macros that call H5open() and read library globals, which Swift
// cannot import; each gets a static inline accessor here.
#ifndef HV_CHVHDF5_SHIM_H
#define HV_CHVHDF5_SHIM_H

#if __has_include(<hdf5.h>)
#include <hdf5.h>
#else
#include <hdf5/serial/hdf5.h>
#endif
#include <stdio.h>
#include <string.h>

// Memory (native) types.
static inline hid_t hv_H5T_NATIVE_FLOAT(void) { return H5T_NATIVE_FLOAT; }
static inline hid_t hv_H5T_NATIVE_DOUBLE(void) { return H5T_NATIVE_DOUBLE; }
static inline hid_t hv_H5T_NATIVE_INT64(void) { return H5T_NATIVE_INT64; }
static inline hid_t hv_H5T_NATIVE_INT32(void) { return H5T_NATIVE_INT32; }
static inline hid_t hv_H5T_NATIVE_UINT16(void) { return H5T_NATIVE_UINT16; }
static inline hid_t hv_H5T_NATIVE_UINT8(void) { return H5T_NATIVE_UINT8; }
// File types: explicit little-endian, as h5py/numpy write on x86 and ARM.
static inline hid_t hv_H5T_IEEE_F32LE(void) { return H5T_IEEE_F32LE; }
static inline hid_t hv_H5T_IEEE_F64LE(void) { return H5T_IEEE_F64LE; }
static inline hid_t hv_H5T_STD_I64LE(void) { return H5T_STD_I64LE; }
static inline hid_t hv_H5T_STD_I32LE(void) { return H5T_STD_I32LE; }
static inline hid_t hv_H5T_STD_U16LE(void) { return H5T_STD_U16LE; }
static inline hid_t hv_H5T_STD_U8LE(void) { return H5T_STD_U8LE; }
static inline hid_t hv_H5T_C_S1(void) { return H5T_C_S1; }
static inline size_t hv_H5T_VARIABLE(void) { return H5T_VARIABLE; }

// File access flags.
static inline unsigned hv_H5F_ACC_TRUNC(void) { return H5F_ACC_TRUNC; }
static inline unsigned hv_H5F_ACC_EXCL(void) { return H5F_ACC_EXCL; }
static inline unsigned hv_H5F_ACC_RDONLY(void) { return H5F_ACC_RDONLY; }
static inline unsigned hv_H5F_ACC_RDWR(void) { return H5F_ACC_RDWR; }

// Property-list classes and defaults.
static inline hid_t hv_H5P_DEFAULT(void) { return H5P_DEFAULT; }
static inline hid_t hv_H5P_DATASET_CREATE(void) { return H5P_DATASET_CREATE; }
static inline hid_t hv_H5P_FILE_ACCESS(void) { return H5P_FILE_ACCESS; }
static inline hid_t hv_H5P_LINK_CREATE(void) { return H5P_LINK_CREATE; }
static inline hid_t hv_H5S_ALL(void) { return H5S_ALL; }
static inline hid_t hv_H5E_DEFAULT(void) { return H5E_DEFAULT; }
static inline haddr_t hv_HADDR_UNDEF(void) { return HADDR_UNDEF; }

// Filters.
static inline herr_t hv_set_fletcher32(hid_t dcpl) { return H5Pset_fletcher32(dcpl); }
static inline int hv_H5Z_FILTER_FLETCHER32(void) { return H5Z_FILTER_FLETCHER32; }
static inline int hv_H5Z_FILTER_DEFLATE(void) { return H5Z_FILTER_DEFLATE; }

// Attribute count without H5O_info_t, whose layout changed between 1.10 and 1.12.
__attribute__((unused)) static herr_t hv_h5_count_attr_cb(hid_t loc, const char *name,
                                                          const H5A_info_t *info, void *data) {
    (void)loc; (void)name; (void)info;
    ++*(hsize_t *)data;
    return 0;
}

/// Number of attributes on an object, or a negative value on failure.
static inline int64_t hv_h5_attribute_count(hid_t object) {
    hsize_t count = 0;
    if (H5Aiterate2(object, H5_INDEX_NAME, H5_ITER_NATIVE, NULL, hv_h5_count_attr_cb, &count) < 0) return -1;
    return (int64_t)count;
}

// Error handling. HDF5's error stack is per thread in the thread-safe build, so automatic
// printing is switched off per thread; hv reads the stack itself when a call fails.
static inline void hv_h5_silence_errors(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

typedef struct {
    char *buffer;
    size_t capacity;
    size_t length;
} hv_h5_error_text_t;

__attribute__((unused)) static herr_t hv_h5_error_walk_cb(unsigned n, const H5E_error2_t *err, void *client) {
    hv_h5_error_text_t *text = (hv_h5_error_text_t *)client;
    if (text->length + 1 >= text->capacity) return 0;
    char major[128] = "", minor[128] = "";
    H5Eget_msg(err->maj_num, NULL, major, sizeof major);
    H5Eget_msg(err->min_num, NULL, minor, sizeof minor);
    int written = snprintf(text->buffer + text->length, text->capacity - text->length,
                           "%s#%u %s(): %s [%s / %s]", n == 0 ? "" : "\n", n,
                           err->func_name ? err->func_name : "?", err->desc ? err->desc : "",
                           major, minor);
    if (written > 0) {
        size_t w = (size_t)written;
        text->length += (w < text->capacity - text->length) ? w : text->capacity - text->length - 1;
    }
    return 0;
}

/// Writes the current thread's HDF5 error stack (innermost call first) into buffer as text,
/// clears the stack, and returns the number of characters written.
static inline size_t hv_h5_take_error_text(char *buffer, size_t capacity) {
    if (capacity == 0) return 0;
    buffer[0] = 0;
    hv_h5_error_text_t text = {buffer, capacity, 0};
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, hv_h5_error_walk_cb, &text);
    H5Eclear2(H5E_DEFAULT);
    return text.length;
}

#endif
