"""IKEv2 numbers (RFC 7296 and the IANA "IKEv2 Parameters" registry) that cgwd uses."""

from __future__ import annotations

import enum

VERSION = 0x20  # major 2, minor 0
HEADER_LEN = 28
GENERIC_HEADER_LEN = 4
IKE_SPI_LEN = 8
ESP_SPI_LEN = 4


class Exchange(enum.IntEnum):
    IKE_SA_INIT = 34
    IKE_AUTH = 35
    CREATE_CHILD_SA = 36
    INFORMATIONAL = 37


class Flag(enum.IntFlag):
    INITIATOR = 0x08  # sent by the original initiator of the IKE SA
    VERSION = 0x10  # "can speak a higher major version" (never set by cgwd)
    RESPONSE = 0x20


class PayloadType(enum.IntEnum):
    NONE = 0
    SA = 33
    KE = 34
    IDI = 35
    IDR = 36
    CERT = 37
    CERTREQ = 38
    AUTH = 39
    NONCE = 40
    NOTIFY = 41
    DELETE = 42
    VENDOR = 43
    TSI = 44
    TSR = 45
    SK = 46
    CP = 47
    EAP = 48
    SKF = 53


class Protocol(enum.IntEnum):
    IKE = 1
    AH = 2
    ESP = 3


class TransformType(enum.IntEnum):
    ENCR = 1
    PRF = 2
    INTEG = 3
    DH = 4
    ESN = 5


# Transform IDs
ENCR_AES_CBC = 12
ENCR_AES_GCM_16 = 20
PRF_HMAC_SHA1 = 2
PRF_HMAC_SHA2_256 = 5
PRF_HMAC_SHA2_384 = 6
PRF_HMAC_SHA2_512 = 7
AUTH_HMAC_SHA1_96 = 2
AUTH_HMAC_SHA2_256_128 = 12
AUTH_HMAC_SHA2_384_192 = 13
AUTH_HMAC_SHA2_512_256 = 14
ESN_NO = 0
ESN_YES = 1

ATTR_KEY_LENGTH = 14  # the only transform attribute IKEv2 defines (TV format)
ATTR_TV = 0x8000

PRF_BY_NAME = {"sha1": PRF_HMAC_SHA1, "sha256": PRF_HMAC_SHA2_256, "sha384": PRF_HMAC_SHA2_384,
               "sha512": PRF_HMAC_SHA2_512}
PRF_NAMES = {v: k for k, v in PRF_BY_NAME.items()}
INTEG_BY_NAME = {"sha1": AUTH_HMAC_SHA1_96, "sha256": AUTH_HMAC_SHA2_256_128,
                 "sha384": AUTH_HMAC_SHA2_384_192, "sha512": AUTH_HMAC_SHA2_512_256}
INTEG_NAMES = {v: k for k, v in INTEG_BY_NAME.items()}


class IdType(enum.IntEnum):
    IPV4_ADDR = 1
    FQDN = 2
    RFC822_ADDR = 3
    IPV6_ADDR = 5
    DER_ASN1_DN = 9
    DER_ASN1_GN = 10
    KEY_ID = 11


class AuthMethod(enum.IntEnum):
    RSA_SIG = 1
    SHARED_KEY_MIC = 2
    DSS_SIG = 3
    DIGITAL_SIGNATURE = 14


class TsType(enum.IntEnum):
    IPV4_ADDR_RANGE = 7
    IPV6_ADDR_RANGE = 8


class Notify(enum.IntEnum):
    # errors (< 16384)
    UNSUPPORTED_CRITICAL_PAYLOAD = 1
    INVALID_IKE_SPI = 4
    INVALID_MAJOR_VERSION = 5
    INVALID_SYNTAX = 7
    INVALID_MESSAGE_ID = 9
    INVALID_SPI = 11
    NO_PROPOSAL_CHOSEN = 14
    INVALID_KE_PAYLOAD = 17
    AUTHENTICATION_FAILED = 24
    SINGLE_PAIR_REQUIRED = 34
    NO_ADDITIONAL_SAS = 35
    INTERNAL_ADDRESS_FAILURE = 36
    FAILED_CP_REQUIRED = 37
    TS_UNACCEPTABLE = 38
    INVALID_SELECTORS = 39
    TEMPORARY_FAILURE = 43
    CHILD_SA_NOT_FOUND = 44
    # status (>= 16384)
    INITIAL_CONTACT = 16384
    SET_WINDOW_SIZE = 16385
    ADDITIONAL_TS_POSSIBLE = 16386
    IPCOMP_SUPPORTED = 16387
    NAT_DETECTION_SOURCE_IP = 16388
    NAT_DETECTION_DESTINATION_IP = 16389
    COOKIE = 16390
    USE_TRANSPORT_MODE = 16391
    HTTP_CERT_LOOKUP_SUPPORTED = 16392
    REKEY_SA = 16393
    ESP_TFC_PADDING_NOT_SUPPORTED = 16394
    NON_FIRST_FRAGMENTS_ALSO = 16395
    MOBIKE_SUPPORTED = 16396
    EAP_ONLY_AUTHENTICATION = 16417
    IKEV2_FRAGMENTATION_SUPPORTED = 16430
    SIGNATURE_HASH_ALGORITHMS = 16431


ERROR_NOTIFY_MAX = 16383
NOTIFY_NAMES = {int(n): n.name for n in Notify}

KEY_PAD = b"Key Pad for IKEv2"  # RFC 7296 2.15
IKE_PORT = 500
NATT_PORT = 4500
