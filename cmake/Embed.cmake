# sdserve_embed(TARGET SYMBOL FILE): links FILE's bytes into TARGET as
#   extern const unsigned char SYMBOL[]; extern const unsigned char SYMBOL_end[];
# using the assembler's .incbin, so large files cost no compile time.
function(sdserve_embed target symbol file)
  set(out ${CMAKE_CURRENT_BINARY_DIR}/embed/${symbol}.S)
  file(WRITE ${out}.in
"    .section .rodata
    .global ${symbol}
    .global ${symbol}_end
    .balign 64
${symbol}:
    .incbin \"${file}\"
${symbol}_end:
    .byte 0
    .section .note.GNU-stack,\"\",@progbits
")
  configure_file(${out}.in ${out} COPYONLY)
  set_source_files_properties(${out} PROPERTIES OBJECT_DEPENDS ${file})
  target_sources(${target} PRIVATE ${out})
endfunction()
