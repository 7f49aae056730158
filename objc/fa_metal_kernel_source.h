// fa_metal_kernel_source.h - what the build tells the shim about the Metal kernels (defined in a file the build
// generates with objc/embed_kernels.py).
//
// When the macOS build has Apple's Metal toolchain it compiles kernels/*.metal into fa_kernels.metallib, installed
// inside the Python package, and embeds no source (fa_embedded_kernel_file_count == 0). Without the toolchain it
// embeds each kernel file's source, includes resolved, and the shim compiles them at first use.
#pragma once

struct fa_embedded_kernel_file {
    const char *name;    // e.g. "fa_forward.metal"
    const char *source;  // complete MSL translation unit (quoted includes inlined)
};

extern const fa_embedded_kernel_file fa_embedded_kernel_files[];
extern const int fa_embedded_kernel_file_count;

// Absolute path of the metallib in the build directory ("" when the build made none): lets an editable install,
// whose extension module is loaded from the build tree, find the library the build just compiled.
extern const char *const fa_metallib_build_path;

// File name of the installed library, next to the extension module inside the package.
#define FA_METALLIB_NAME "fa_kernels.metallib"
