// A header of macros.metal (included with quotes, found beside it): tile helpers chosen by the preprocessor.
#pragma once

#ifndef TILE
#define TILE 4            // -D TILE=8 on the command line overrides it
#endif
#define CAT(a, b) a##b
#define STR(x) #x
#define XSTR(x) STR(x)

#if TILE >= 8
#define TILE_NAME wide
#else
#define TILE_NAME narrow
#endif

template <typename T>
inline T tile_sum(const device T* x, uint base) {
    T acc = T(0);
    for (uint k = 0; k < TILE; k++) {
        acc += x[base + k];
    }
    return acc;
}
