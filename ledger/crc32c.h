/*
 * crc32c.h — CRC-32C (Castagnoli), the checksum of every ledger record.
 *
 * Uses the SSE4.2 crc32 instruction where the CPU has it (about 8 bytes
 * per cycle) and a table otherwise; both give the same value.
 */
#ifndef TOLLGATE_CRC32C_H
#define TOLLGATE_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* CRC-32C of data[0..len), continuing from crc (0 to start). */
uint32_t crc32c(uint32_t crc, const void *data, size_t len);

#endif
