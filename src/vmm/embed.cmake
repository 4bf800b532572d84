# cmake -DIN=<file> -DOUT=<header> -DNAME=<symbol> -P embed.cmake : embeds a text file as a string_view constant.
file(READ "${IN}" content HEX)
string(LENGTH "${content}" len)
set(out "// Generated from ${IN}; do not edit.\n#pragma once\n#include <string_view>\nstatic const char ${NAME}_data[] = {")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "'\\\\x\\1'," bytes "${content}")
string(APPEND out "${bytes}0};\nstatic constexpr std::string_view ${NAME}(${NAME}_data, sizeof(${NAME}_data) - 1);\n")
file(WRITE "${OUT}" "${out}")
