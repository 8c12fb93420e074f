public enum HVCommandsPlaceholder {}
