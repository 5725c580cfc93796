//! LoRaWAN Regional Parameters (RP002-1.0.4).
