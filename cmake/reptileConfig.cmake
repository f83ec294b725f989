# CMake package for reptile's C ABI (installed by cmake/install.sh).
#
#   find_package(reptile 0.1 REQUIRED)
#   target_link_libraries(app PRIVATE reptile::reptile)
#
# Imported targets:
#   reptile::reptile_shared  libreptile.so
#   reptile::reptile_static  libreptile.a (brings Threads, libdl and libm along)
#   reptile::reptile         reptile::reptile_shared, or reptile::reptile_static when the
#                            variable REPTILE_USE_STATIC is ON before find_package
# All carry the include directory with reptile.h (C99) and reptile.hpp (the C++17 wrapper).
# Variables: reptile_VERSION, reptile_INCLUDE_DIRS.

get_filename_component(_reptile_prefix "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)

include(CMakeFindDependencyMacro)
set(THREADS_PREFER_PTHREAD_FLAG ON)
find_dependency(Threads)

foreach(_reptile_file include/reptile.h lib/libreptile.so lib/libreptile.a)
  if(NOT EXISTS "${_reptile_prefix}/${_reptile_file}")
    set(reptile_FOUND FALSE)
    set(reptile_NOT_FOUND_MESSAGE "reptile: ${_reptile_prefix}/${_reptile_file} is missing")
    return()
  endif()
endforeach()

if(NOT TARGET reptile::reptile_shared)
  add_library(reptile::reptile_shared SHARED IMPORTED)
  set_target_properties(reptile::reptile_shared PROPERTIES
    IMPORTED_LOCATION "${_reptile_prefix}/lib/libreptile.so"
    # The Rust-built library has no SONAME: link it as -lreptile so that executables record
    # "libreptile.so", not a path.
    IMPORTED_NO_SONAME TRUE
    INTERFACE_INCLUDE_DIRECTORIES "${_reptile_prefix}/include")

  add_library(reptile::reptile_static STATIC IMPORTED)
  set_target_properties(reptile::reptile_static PROPERTIES
    IMPORTED_LOCATION "${_reptile_prefix}/lib/libreptile.a"
    IMPORTED_LINK_INTERFACE_LANGUAGES "C"
    INTERFACE_INCLUDE_DIRECTORIES "${_reptile_prefix}/include"
    INTERFACE_LINK_LIBRARIES "Threads::Threads;${CMAKE_DL_LIBS};m")

  add_library(reptile::reptile INTERFACE IMPORTED)
  if(REPTILE_USE_STATIC)
    set_target_properties(reptile::reptile PROPERTIES INTERFACE_LINK_LIBRARIES reptile::reptile_static)
  else()
    set_target_properties(reptile::reptile PROPERTIES INTERFACE_LINK_LIBRARIES reptile::reptile_shared)
  endif()
endif()

set(reptile_INCLUDE_DIRS "${_reptile_prefix}/include")
unset(_reptile_prefix)
unset(_reptile_file)
