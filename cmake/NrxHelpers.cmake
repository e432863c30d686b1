# One helper per target kind, so every target gets the same warnings, include root and sanitizer
# flags (the model is Abseil's absl_cc_library). Folders call these; nothing is set globally.
include_guard(GLOBAL)

option(NRX_WERROR "Treat compiler warnings as errors" OFF)
option(NRX_THREAD_SAFETY "Clang -Wthread-safety as errors" OFF)

function(_nrx_target_settings target visibility)
  target_compile_features(${target} ${visibility} cxx_std_20)
  target_include_directories(${target} ${visibility} ${PROJECT_SOURCE_DIR})
  if(NOT visibility STREQUAL "INTERFACE")
    target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor
                                             -Wno-interference-size)
    if(CMAKE_CXX_COMPILER_ID MATCHES "Clang")
      target_compile_options(${target} PRIVATE -Wno-unknown-warning-option)
      if(NRX_THREAD_SAFETY)
        target_compile_options(${target} PRIVATE -Wthread-safety -Werror=thread-safety)
      endif()
    endif()
    if(NRX_WERROR)
      target_compile_options(${target} PRIVATE -Werror)
    endif()
  endif()
endfunction()

# nrx_cc_library(NAME name ALIAS nrx::alias [OBJECT|SHARED] [SRCS ...] [HDRS ...] [DEPS ...])
# Without SRCS the library is header-only (INTERFACE). OBJECT makes an object library, whose
# objects always reach the binary (for TEST_P registrations nothing references by name). SHARED
# makes a shared library for programs outside the tree (libnrx.so); its DEPS are linked privately.
function(nrx_cc_library)
  cmake_parse_arguments(A "OBJECT;SHARED" "NAME;ALIAS" "SRCS;HDRS;DEPS" ${ARGN})
  if(A_SHARED)
    add_library(${A_NAME} SHARED ${A_SRCS} ${A_HDRS})
    _nrx_target_settings(${A_NAME} PUBLIC)
    target_link_libraries(${A_NAME} PRIVATE ${A_DEPS})
  elseif(A_OBJECT)
    add_library(${A_NAME} OBJECT ${A_SRCS} ${A_HDRS})
    _nrx_target_settings(${A_NAME} PUBLIC)
    target_link_libraries(${A_NAME} PUBLIC ${A_DEPS})
  elseif(A_SRCS)
    add_library(${A_NAME} STATIC ${A_SRCS} ${A_HDRS})
    _nrx_target_settings(${A_NAME} PUBLIC)
    target_link_libraries(${A_NAME} PUBLIC ${A_DEPS})
  else()
    add_library(${A_NAME} INTERFACE ${A_HDRS})
    _nrx_target_settings(${A_NAME} INTERFACE)
    target_link_libraries(${A_NAME} INTERFACE ${A_DEPS})
  endif()
  add_library(${A_ALIAS} ALIAS ${A_NAME})
endfunction()

# nrx_cc_binary(NAME name SRCS ... [DEPS ...]) -> build/<preset>/bin/name
function(nrx_cc_binary)
  cmake_parse_arguments(A "" "NAME" "SRCS;DEPS" ${ARGN})
  add_executable(${A_NAME} ${A_SRCS})
  _nrx_target_settings(${A_NAME} PRIVATE)
  target_link_libraries(${A_NAME} PRIVATE ${A_DEPS})
endfunction()

# nrx_cc_test(NAME name SRCS ... [DEPS ...] LABEL unit|conformance|stress [TIMEOUT s])
# A GoogleTest binary registered with CTest test by test, with one ctest label. (One: CMake's
# gtest_discover_tests passes PROPERTIES through a generated script that splits lists, so a
# second label would be lost.) Every test gets a timeout so nothing hangs CI.
function(nrx_cc_test)
  cmake_parse_arguments(A "" "NAME;TIMEOUT;LABEL" "SRCS;DEPS" ${ARGN})
  if(NOT A_LABEL MATCHES "^(unit|conformance|stress)$")
    message(FATAL_ERROR "nrx_cc_test(${A_NAME}): LABEL must be unit, conformance or stress")
  endif()
  if(NOT A_TIMEOUT)
    set(A_TIMEOUT 300)
  endif()
  nrx_cc_binary(NAME ${A_NAME} SRCS ${A_SRCS} DEPS ${A_DEPS} GTest::gtest GTest::gtest_main GTest::gmock)
  gtest_discover_tests(${A_NAME}
    DISCOVERY_TIMEOUT 60
    PROPERTIES TIMEOUT ${A_TIMEOUT} LABELS ${A_LABEL})
endfunction()
