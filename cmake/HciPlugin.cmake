# hci_add_plugin(<name> SOURCES <src>... [LIBRARIES <lib>...] [OUTPUT_DIRECTORY <dir>] [NO_INSTALL])
#
# Builds a libhci plugin the way the house style asks: an OBJECT library
# `hci_plugin_<name>_obj` (unit tests link it) plus a thin MODULE `hci_plugin_<name>` whose file is
# `hci_<name>.so` (integration tests and the Host load it). Both build with hidden visibility;
# the module exports only `hci_plugin_entry`. Installed under <libdir>/hci/plugins of the
# project's install prefix (`cmake --install <build> --prefix <libhci's prefix>` puts it where
# libhci looks by default) unless NO_INSTALL.
#
# <name> must be the name given to HCI_PLUGIN(...), an RFC 1123 label: the loader finds a plugin
# it refused by its file name, hci_<name>.so.
function(hci_add_plugin name)
  cmake_parse_arguments(ARG "NO_INSTALL" "OUTPUT_DIRECTORY" "SOURCES;LIBRARIES" ${ARGN})
  string(LENGTH "${name}" length)
  if(NOT name MATCHES "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" OR length GREATER 63)
    message(FATAL_ERROR "hci_add_plugin(${name}): the name must be an RFC 1123 label (1-63 "
                        "lowercase letters, digits and '-', starting and ending with a letter or "
                        "digit), as HCI_PLUGIN requires")
  endif()
  if(NOT ARG_SOURCES)
    message(FATAL_ERROR "hci_add_plugin(${name}): SOURCES is required")
  endif()
  if(NOT ARG_OUTPUT_DIRECTORY)
    if(DEFINED HCI_PLUGIN_OUTPUT_DIR)
      set(ARG_OUTPUT_DIRECTORY "${HCI_PLUGIN_OUTPUT_DIR}")
    else()
      set(ARG_OUTPUT_DIRECTORY "${CMAKE_CURRENT_BINARY_DIR}")
    endif()
  endif()

  set(obj hci_plugin_${name}_obj)
  add_library(${obj} OBJECT ${ARG_SOURCES})
  set_target_properties(${obj} PROPERTIES
    POSITION_INDEPENDENT_CODE ON
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON)
  target_compile_features(${obj} PUBLIC cxx_std_20)
  target_link_libraries(${obj} PUBLIC hci::hci ${ARG_LIBRARIES})

  set(mod hci_plugin_${name})
  add_library(${mod} MODULE)
  target_link_libraries(${mod} PRIVATE ${obj})
  # A plugin that needs a symbol nobody provides should fail to link, not to load. (Not with
  # clang's sanitizers: their runtime is linked into executables only.)
  if(NOT (CMAKE_CXX_COMPILER_ID MATCHES "Clang" AND HCI_SANITIZE))
    target_link_options(${mod} PRIVATE "LINKER:--no-undefined")
  endif()
  # Only the entry symbol leaves the plugin: template instances and third-party typeinfo stay
  # private, so two plugins can never interpose each other's copies of them.
  set(map "${CMAKE_CURRENT_BINARY_DIR}/hci_plugin_${name}.map")
  file(WRITE "${map}" "{ global: hci_plugin_entry; local: *; };\n")
  target_link_options(${mod} PRIVATE "LINKER:--version-script=${map}")
  set_property(TARGET ${mod} APPEND PROPERTY LINK_DEPENDS "${map}")
  set_target_properties(${mod} PROPERTIES
    PREFIX ""
    OUTPUT_NAME "hci_${name}"
    LIBRARY_OUTPUT_DIRECTORY "${ARG_OUTPUT_DIRECTORY}")
  if(NOT ARG_NO_INSTALL)
    if(NOT DEFINED HCI_INSTALL_PLUGINDIR)
      include(GNUInstallDirs)
      set(HCI_INSTALL_PLUGINDIR "${CMAKE_INSTALL_LIBDIR}/hci/plugins")
    endif()
    install(TARGETS ${mod} LIBRARY DESTINATION "${HCI_INSTALL_PLUGINDIR}")
  endif()
endfunction()
