// fa_metal_shim.h - Metal entry points beyond fa_backends.h, defined by objc/fa_metal_*.mm on macOS and by
// csrc/metal_unavailable.cpp everywhere else (where they return FA_ERR_UNAVAILABLE with the reason). It lives in
// csrc/, beside fa_backends.h, because both implementations include it: a header below them, not one of them.
#pragma once

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Exported from the extension module (the static core is built with hidden visibility) so that
 * flash_attn_cy._flash_attn_metal can reach it with ctypes without a Cython wrapper. */
#define FA_METAL_EXPORT __attribute__((visibility("default")))

/* Compile user Metal Shading Language source at run time (flash_attn_cy._flash_attn_metal.compile_shaders).
 * On success writes the library's function names, newline-separated and sorted, into names[nameslen] and returns
 * FA_OK; a compile error returns FA_ERR_VALUE with the compiler's log in err. The compiled library is not kept. */
FA_METAL_EXPORT int fa_metal_compile_source(const char *source, char *names, size_t nameslen, char *err, size_t errlen);

/* Load the kernel library this build ships (fa_kernels.metallib) on the default Metal device, whether or not that
 * device can run our kernels (a CI runner's paravirtual device can still load it), and list its functions: the
 * library's path goes into path[pathlen], its function names, newline-separated and sorted, into names[nameslen].
 * FA_ERR_UNAVAILABLE (reason in err) when there is no Metal device or the build embeds kernel source instead of a
 * metallib; FA_ERR_RUNTIME when Metal refuses to load the file. (flash_attn_cy._metallib, used by the wheel check.) */
FA_METAL_EXPORT int fa_metal_library_functions(char *path, size_t pathlen, char *names, size_t nameslen, char *err,
                                               size_t errlen);

#ifdef __cplusplus
}
#endif
