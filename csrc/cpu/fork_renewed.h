// fork_renewed.h - process-wide objects that a fork()ed child replaces instead of inheriting.
//
// After fork() the child holds only the forking thread: worker threads of the parent are gone and a mutex may be held
// by a thread that no longer exists. An object reached through ForkRenewed<T>::get() is created on first use and, in
// a child, replaced by T::renewed_after_fork(old) before any code of the child runs; the old object is leaked and
// never touched again (joining or unlocking it is impossible, and its pages are copy-on-write).
// Objects are never destroyed: threads may use them during static destruction at interpreter exit.
#pragma once

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif

namespace fa_cpu {

template <class T>
struct ForkRenewed {
    static T &get() {
        static const bool created = [] {
            instance = new T();
#if defined(__unix__) || defined(__APPLE__)
            pthread_atfork(nullptr, nullptr, &renew_in_child);
#endif
            return true;
        }();
        (void)created;
        return *instance;
    }

  private:
    static void renew_in_child() { instance = T::renewed_after_fork(*instance); }
    static inline T *instance = nullptr;
};

}  // namespace fa_cpu
