# admis_add_plugin(<target> SOURCES <files...> [OUTPUT_DIRECTORY <dir>])
# Builds a plugin library with the settings the host expects: a shared module linked
# against the SDK (and so against the same shared LibTorch), symbols hidden except the
# entry point written by ADMIS_PLUGIN().
function(admis_add_plugin target)
  cmake_parse_arguments(ARG "" "OUTPUT_DIRECTORY" "SOURCES" ${ARGN})
  add_library(${target} MODULE ${ARG_SOURCES})
  if(TARGET admis_sdk)
    target_link_libraries(${target} PRIVATE admis_sdk)
  else()
    target_link_libraries(${target} PRIVATE admis::sdk)
  endif()
  set_target_properties(${target} PROPERTIES
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON
    POSITION_INDEPENDENT_CODE ON)
  target_link_options(${target} PRIVATE -Wl,--no-undefined)
  if(ARG_OUTPUT_DIRECTORY)
    set_target_properties(${target} PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${ARG_OUTPUT_DIRECTORY})
  endif()
endfunction()
