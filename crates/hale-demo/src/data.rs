//! Static tables for the synthetic board: names, places, sites, services,
//! clinics, lab analytes, imaging studies, allergies and note templates.
//! Every name and place here is invented or generic; no real hospital.

pub(crate) const BOARD_NAME: &str = "NHS Clydebank and Strathmore Health Board";

pub(crate) struct SiteDef {
    pub code: &'static str,
    pub name: &'static str,
    pub town: &'static str,
    pub line: &'static str,
    pub postcode: &'static str,
    pub phone: &'static str,
    pub ods: &'static str,
}

pub(crate) const SITES: &[SiteDef] = &[
    SiteDef {
        code: "QEH",
        name: "Queen Eleanor Hospital",
        town: "Clydebank",
        line: "200 Kilbowie Road",
        postcode: "G81 2TQ",
        phone: "0141 496 0100",
        ods: "ZCS10",
    },
    SiteDef {
        code: "SRI",
        name: "Strathmore Royal Infirmary",
        town: "Forfar",
        line: "Arbroath Road",
        postcode: "DD8 2HA",
        phone: "0131 496 0200",
        ods: "ZCS20",
    },
    SiteDef {
        code: "KGH",
        name: "Kilbarchan General Hospital",
        town: "Kilbarchan",
        line: "Milliken Park Road",
        postcode: "PA10 2JF",
        phone: "0141 496 0300",
        ods: "ZCS30",
    },
    SiteDef {
        code: "BMH",
        name: "Balmuir Memorial Hospital",
        town: "Dundee",
        line: "Balmuir Brae",
        postcode: "DD3 9LB",
        phone: "0131 496 0400",
        ods: "ZCS40",
    },
];

/// GP practices: (name, town, line, postcode, ODS-like code).
pub(crate) const GP_PRACTICES: &[(&str, &str, &str, &str, &str)] = &[
    (
        "Kilbowie Brae Medical Practice",
        "Clydebank",
        "14 Kilbowie Brae",
        "G81 6QP",
        "ZGP01",
    ),
    (
        "Whitecrook Family Practice",
        "Clydebank",
        "2 Whitecrook Lane",
        "G81 1RN",
        "ZGP02",
    ),
    (
        "Partick Cross Surgery",
        "Glasgow",
        "71 Crossloan Road",
        "G11 5TJ",
        "ZGP03",
    ),
    (
        "Abbeymill Medical Group",
        "Paisley",
        "9 Abbeymill Street",
        "PA1 2HW",
        "ZGP04",
    ),
    (
        "Locher Water Practice",
        "Kilbarchan",
        "1 Locher Road",
        "PA10 2DT",
        "ZGP05",
    ),
    (
        "Strathmore Vale Group Practice",
        "Forfar",
        "33 Lour Terrace",
        "DD8 1BE",
        "ZGP06",
    ),
    (
        "Balgay Hill Medical Centre",
        "Dundee",
        "120 Balgay Crescent",
        "DD2 2XL",
        "ZGP07",
    ),
    (
        "Pilrig Green Surgery",
        "Edinburgh",
        "5 Pilrig Green",
        "EH6 5BY",
        "ZGP08",
    ),
];

/// Landline drama ranges (Ofcom): prefix of the formatted number; the last
/// three digits (000-999) are appended.
pub(crate) const LANDLINE_GLASGOW: &str = "0141 496 0";
pub(crate) const LANDLINE_EDINBURGH: &str = "0131 496 0";
pub(crate) const LANDLINE_LONDON: &str = "020 7946 0";
/// Mobile drama range 07700 900000-900999.
pub(crate) const MOBILE: &str = "07700 900";

pub(crate) struct City {
    pub name: &'static str,
    pub outward: &'static [&'static str],
    /// The Ofcom drama landline prefix for this area, if there is one.
    pub landline: Option<&'static str>,
    pub weight: u32,
    /// Glasgow-style tenement flats ("Flat 2/1").
    pub tenements: bool,
    /// Indexes into `GP_PRACTICES` where people here are registered.
    pub gps: &'static [usize],
}

pub(crate) const CITIES: &[City] = &[
    City {
        name: "Glasgow",
        outward: &["G11", "G12", "G13", "G14", "G20", "G31", "G32", "G41", "G42", "G51"],
        landline: Some(LANDLINE_GLASGOW),
        weight: 26,
        tenements: true,
        gps: &[2],
    },
    City {
        name: "Clydebank",
        outward: &["G81"],
        landline: Some(LANDLINE_GLASGOW),
        weight: 18,
        tenements: true,
        gps: &[0, 1],
    },
    City {
        name: "Paisley",
        outward: &["PA1", "PA2", "PA3"],
        landline: Some(LANDLINE_GLASGOW),
        weight: 9,
        tenements: true,
        gps: &[3],
    },
    City {
        name: "Kilbarchan",
        outward: &["PA10"],
        landline: None,
        weight: 3,
        tenements: false,
        gps: &[4],
    },
    City {
        name: "Johnstone",
        outward: &["PA5", "PA6"],
        landline: None,
        weight: 4,
        tenements: false,
        gps: &[4],
    },
    City {
        name: "Dumbarton",
        outward: &["G82"],
        landline: None,
        weight: 4,
        tenements: false,
        gps: &[0, 1],
    },
    City {
        name: "Forfar",
        outward: &["DD8"],
        landline: None,
        weight: 6,
        tenements: false,
        gps: &[5],
    },
    City {
        name: "Kirriemuir",
        outward: &["DD8"],
        landline: None,
        weight: 2,
        tenements: false,
        gps: &[5],
    },
    City {
        name: "Dundee",
        outward: &["DD1", "DD2", "DD3", "DD4", "DD5"],
        landline: None,
        weight: 12,
        tenements: true,
        gps: &[6],
    },
    City {
        name: "Perth",
        outward: &["PH1", "PH2"],
        landline: None,
        weight: 5,
        tenements: false,
        gps: &[6],
    },
    City {
        name: "Edinburgh",
        outward: &["EH3", "EH4", "EH6", "EH7", "EH10", "EH11"],
        landline: Some(LANDLINE_EDINBURGH),
        weight: 8,
        tenements: true,
        gps: &[7],
    },
    City {
        name: "London",
        outward: &["E1", "N1", "SE1", "NW5"],
        landline: Some(LANDLINE_LONDON),
        weight: 2,
        tenements: false,
        gps: &[],
    },
];

/// Letters allowed in the inward part of a UK postcode.
pub(crate) const POSTCODE_LETTERS: &[u8] = b"ABDEFGHJLNPQRSTUWXYZ";

#[rustfmt::skip]
pub(crate) const STREETS: &[&str] = &[
    "High Street", "Main Street", "Church Street", "Station Road", "Victoria Road", "Park Avenue", "Castle Street",
    "Dumbarton Road", "Great Western Road", "Kilbowie Road", "Glasgow Road", "Queen Street", "King Street",
    "Mill Road", "Burnside Avenue", "Hillfoot Drive", "Braeside Crescent", "Abbotsford Place", "Marchmont Terrace",
    "Woodlands Drive", "Brora Street", "Strathmore Avenue", "Lochview Road", "Glenburn Gardens", "Craigton Road",
    "Riverside Walk", "Orchard Grove", "Beechwood Drive", "Rowan Crescent", "Thistle Street", "Netherton Road",
    "Kirkton Avenue", "Ashgrove Street", "Bellfield Road", "Douglas Street", "Wallace Street", "Bruce Street",
    "School Lane", "Manse Road", "Links Road",
];

#[rustfmt::skip]
pub(crate) const SURNAMES: &[&str] = &[
    "Smith", "Brown", "Wilson", "Campbell", "Stewart", "Thomson", "Robertson", "Anderson", "MacDonald", "Scott",
    "Reid", "Murray", "Taylor", "Clark", "Ross", "Watson", "Morrison", "Paterson", "Young", "Mitchell", "Walker",
    "Fraser", "Miller", "McDonald", "Gray", "Henderson", "Hamilton", "Johnston", "Duncan", "Graham", "Ferguson",
    "Kerr", "Davidson", "Bell", "Cameron", "Kelly", "Martin", "Hunter", "Allan", "Grant", "Simpson", "MacKenzie",
    "Black", "MacLeod", "McLean", "Sinclair", "Wallace", "Marshall", "Russell", "Gibson", "Kennedy", "Wood", "Hughes",
    "Jones", "Williams", "Davies", "Evans", "Thomas", "Roberts", "Lewis", "Morgan", "Griffiths", "Price", "Jenkins",
    "Rees", "Lloyd", "Owen", "Powell", "Pritchard", "Johnson", "Wright", "Green", "Hall", "Thompson", "White",
    "Harris", "Jackson", "Clarke", "Turner", "Hill", "Cooper", "Ward", "Moore", "King", "Baker", "Harrison", "Morris",
    "Patel", "Khan", "Singh", "Ahmed", "Ali", "Hussain", "Begum", "Shah", "Chowdhury", "Rahman", "Kaur", "Iqbal",
    "Sharma", "Malik", "Akhtar", "Mahmood", "Aslam", "Bashir", "Chaudhry", "Gill", "Sandhu", "Dhillon", "Mistry",
    "Desai", "Nair", "Wong", "Chen", "Li", "Cheung", "Nowak", "Kowalski", "O'Brien", "O'Neill", "Quinn", "Doherty",
    "Gallagher", "McLaughlin", "Docherty", "Boyle", "McGregor", "Buchanan", "Crawford", "Lindsay", "Drummond",
    "Baird", "Munro", "MacIntyre", "Ogilvie", "Galbraith", "Rennie", "Lamont", "Brodie", "Pollock", "Tait", "Moffat",
    "Dunlop", "Hendry", "Cunningham", "Wilkinson", "Mackay", "Sutherland", "Gordon", "Nicol", "Watt", "Findlay",
    "Shaw", "Jamieson", "Craig", "Sharp", "Hay", "Milne", "Christie", "Forbes", "Ritchie", "Adams", "Chisholm",
    "Rose", "Ewing", "Lennox", "Barclay",
];

#[rustfmt::skip]
pub(crate) const MALE_NAMES: &[&str] = &[
    "James", "John", "David", "Robert", "William", "Andrew", "Thomas", "Michael", "Paul", "Mark", "Peter", "Stephen",
    "Alexander", "Christopher", "Daniel", "Matthew", "Ryan", "Jack", "Lewis", "Callum", "Ewan", "Fraser", "Hamish",
    "Alasdair", "Iain", "Angus", "Duncan", "Ruaridh", "Euan", "Gregor", "Kenneth", "Colin", "Graham", "Stuart",
    "Craig", "Scott", "Gareth", "Rhys", "Dafydd", "Owain", "Emyr", "Huw", "Mohammed", "Muhammad", "Imran", "Arjun",
    "Ravi", "Amir", "Hassan", "Omar", "Sanjay", "Rajesh", "Harpreet", "Wei", "Tomasz", "Piotr", "Seán", "Liam",
    "Noah", "Oliver", "Harry", "George", "Leo", "Archie", "Finlay", "Rory", "Brian", "Gordon", "Derek", "Alan", "Ian",
    "Kyle",
];

#[rustfmt::skip]
pub(crate) const FEMALE_NAMES: &[&str] = &[
    "Margaret", "Elizabeth", "Mary", "Catherine", "Anne", "Helen", "Susan", "Karen", "Fiona", "Lorraine", "Claire",
    "Nicola", "Lisa", "Emma", "Laura", "Sarah", "Gemma", "Rachel", "Amy", "Rebecca", "Hannah", "Sophie", "Olivia",
    "Emily", "Isla", "Ava", "Freya", "Ella", "Grace", "Eilidh", "Morag", "Kirsty", "Catriona", "Mhairi", "Iona",
    "Shona", "Ishbel", "Rhona", "Siân", "Cerys", "Bethan", "Ffion", "Angharad", "Rhiannon", "Megan", "Carys", "Priya",
    "Aisha", "Fatima", "Zara", "Ayesha", "Nadia", "Anjali", "Sunita", "Amira", "Samina", "Noor", "Mei", "Agnieszka",
    "Róisín", "Niamh", "Zoë", "Chloé", "Jean", "Agnes", "Isobel", "Jessica", "Lucy", "Charlotte", "Amelia", "Lily",
    "Harpreet",
];

/// Next-of-kin relationship text, for adult and child patients.
pub(crate) const KIN_ADULT: &[&str] = &[
    "Wife", "Husband", "Partner", "Daughter", "Son", "Sister", "Brother", "Friend", "Mother", "Father",
];
pub(crate) const KIN_CHILD: &[&str] = &["Mother", "Father", "Grandmother", "Grandfather"];

/// How a slot timetable is laid out.
#[derive(Clone, Copy)]
pub(crate) enum Layout {
    /// Outpatient clinic: 09:00-12:30 and 13:30-17:00 sessions, slots of `len` minutes.
    Clinic { len: u16 },
    /// Day-case list: 08:30-12:30 and 13:30-17:30 sessions.
    DayList { len: u16 },
    /// Theatre list: 08:30-17:30 back-to-back cases of `len` minutes.
    Theatre { len: u16 },
    /// Chemotherapy day unit: 08:30-17:30, `chairs` parallel chairs with
    /// treatments of 60, 90 or 120 minutes.
    Chairs { chairs: u8 },
}

pub(crate) struct Service {
    pub code: &'static str,
    pub display: &'static str,
    /// Index into `codes::APPOINTMENT_CATEGORIES`.
    pub category: usize,
    pub layout: Layout,
    /// Surgeons are "Mr"/"Ms" in the UK; physicians "Dr".
    pub surgical: bool,
    /// Practitioner specialty text.
    pub specialty: &'static str,
    /// Which clinic-note templates apply.
    pub notes: NoteKind,
}

pub(crate) const OUTPATIENT: usize = 0;
pub(crate) const INPATIENT: usize = 1;
pub(crate) const DAY_CASE: usize = 2;
pub(crate) const CHEMO: usize = 3;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoteKind {
    Cardiology,
    Respiratory,
    Diabetes,
    Dermatology,
    Eyes,
    Orthopaedic,
    Surgical,
    Endoscopy,
    Oncology,
    Medical,
}

macro_rules! svc {
    ($code:literal, $display:literal, $cat:expr, $layout:expr, $surg:literal, $spec:literal, $notes:ident) => {
        Service {
            code: $code,
            display: $display,
            category: $cat,
            layout: $layout,
            surgical: $surg,
            specialty: $spec,
            notes: NoteKind::$notes,
        }
    };
}

pub(crate) const SERVICES: &[Service] = &[
    svc!(
        "cardiology",
        "Cardiology",
        OUTPATIENT,
        Layout::Clinic { len: 20 },
        false,
        "Cardiology",
        Cardiology
    ),
    svc!(
        "dermatology",
        "Dermatology",
        OUTPATIENT,
        Layout::Clinic { len: 20 },
        false,
        "Dermatology",
        Dermatology
    ),
    svc!(
        "ophthalmology",
        "Ophthalmology",
        OUTPATIENT,
        Layout::Clinic { len: 20 },
        true,
        "Ophthalmology",
        Eyes
    ),
    svc!(
        "orthopaedics",
        "Trauma and orthopaedics",
        OUTPATIENT,
        Layout::Clinic { len: 20 },
        true,
        "Trauma and orthopaedic surgery",
        Orthopaedic
    ),
    svc!(
        "respiratory",
        "Respiratory medicine",
        OUTPATIENT,
        Layout::Clinic { len: 30 },
        false,
        "Respiratory medicine",
        Respiratory
    ),
    svc!(
        "diabetes",
        "Diabetes and endocrinology",
        OUTPATIENT,
        Layout::Clinic { len: 30 },
        false,
        "Diabetes and endocrinology",
        Diabetes
    ),
    svc!(
        "gastroenterology",
        "Gastroenterology",
        OUTPATIENT,
        Layout::Clinic { len: 30 },
        false,
        "Gastroenterology",
        Medical
    ),
    svc!(
        "ent",
        "Ear, nose and throat",
        OUTPATIENT,
        Layout::Clinic { len: 20 },
        true,
        "Otolaryngology",
        Surgical
    ),
    svc!(
        "urology",
        "Urology",
        OUTPATIENT,
        Layout::Clinic { len: 20 },
        true,
        "Urology",
        Surgical
    ),
    svc!(
        "rheumatology",
        "Rheumatology",
        OUTPATIENT,
        Layout::Clinic { len: 30 },
        false,
        "Rheumatology",
        Medical
    ),
    svc!(
        "neurology",
        "Neurology",
        OUTPATIENT,
        Layout::Clinic { len: 30 },
        false,
        "Neurology",
        Medical
    ),
    svc!(
        "general-surgery",
        "General surgery",
        OUTPATIENT,
        Layout::Clinic { len: 20 },
        true,
        "General surgery",
        Surgical
    ),
    svc!(
        "oncology",
        "Medical oncology",
        OUTPATIENT,
        Layout::Clinic { len: 30 },
        false,
        "Medical oncology",
        Oncology
    ),
    svc!(
        "hip-replacement",
        "Hip replacement",
        INPATIENT,
        Layout::Theatre { len: 150 },
        true,
        "Trauma and orthopaedic surgery",
        Orthopaedic
    ),
    svc!(
        "knee-replacement",
        "Knee replacement",
        INPATIENT,
        Layout::Theatre { len: 120 },
        true,
        "Trauma and orthopaedic surgery",
        Orthopaedic
    ),
    svc!(
        "cataract-surgery",
        "Cataract surgery",
        INPATIENT,
        Layout::Theatre { len: 60 },
        true,
        "Ophthalmology",
        Eyes
    ),
    svc!(
        "laparoscopic-cholecystectomy",
        "Laparoscopic cholecystectomy",
        INPATIENT,
        Layout::Theatre { len: 90 },
        true,
        "General surgery",
        Surgical
    ),
    svc!(
        "spinal-surgery",
        "Spinal surgery",
        INPATIENT,
        Layout::Theatre { len: 180 },
        true,
        "Trauma and orthopaedic surgery",
        Orthopaedic
    ),
    svc!(
        "endoscopy",
        "Endoscopy",
        DAY_CASE,
        Layout::DayList { len: 30 },
        false,
        "Gastroenterology",
        Endoscopy
    ),
    svc!(
        "colonoscopy",
        "Colonoscopy",
        DAY_CASE,
        Layout::DayList { len: 45 },
        false,
        "Gastroenterology",
        Endoscopy
    ),
    svc!(
        "cystoscopy",
        "Cystoscopy",
        DAY_CASE,
        Layout::DayList { len: 30 },
        true,
        "Urology",
        Surgical
    ),
    svc!(
        "hernia-repair",
        "Hernia repair",
        DAY_CASE,
        Layout::DayList { len: 60 },
        true,
        "General surgery",
        Surgical
    ),
    svc!(
        "chemotherapy",
        "Chemotherapy day unit",
        CHEMO,
        Layout::Chairs { chairs: 4 },
        false,
        "Medical oncology",
        Oncology
    ),
    svc!(
        "haematology-day-unit",
        "Haematology day unit",
        CHEMO,
        Layout::Chairs { chairs: 3 },
        false,
        "Haematology",
        Oncology
    ),
];

pub(crate) fn service(code: &str) -> &'static Service {
    SERVICES
        .iter()
        .find(|s| s.code == code)
        .unwrap_or_else(|| panic!("unknown service {code}"))
}

/// Weekday bits: Monday = 1, Tuesday = 2, ..., Friday = 16.
pub(crate) const MON: u8 = 1;
pub(crate) const TUE: u8 = 2;
pub(crate) const WED: u8 = 4;
pub(crate) const THU: u8 = 8;
pub(crate) const FRI: u8 = 16;
pub(crate) const WEEKDAYS: u8 = 31;

/// Session bits for clinics and day lists.
pub(crate) const AM: u8 = 1;
pub(crate) const PM: u8 = 2;
pub(crate) const ALL_DAY: u8 = 3;

/// The clinics: (site index, service code, weekdays, sessions).
pub(crate) const CLINICS: &[(usize, &str, u8, u8)] = &[
    // QEH: Queen Eleanor Hospital, Clydebank (all four categories)
    (0, "cardiology", MON | WED | THU, ALL_DAY),
    (0, "respiratory", TUE | FRI, ALL_DAY),
    (0, "diabetes", MON | THU, ALL_DAY),
    (0, "gastroenterology", WED, ALL_DAY),
    (0, "dermatology", TUE | THU, AM),
    (0, "hip-replacement", MON | WED | FRI, ALL_DAY),
    (0, "endoscopy", WEEKDAYS, ALL_DAY),
    (0, "chemotherapy", WEEKDAYS, ALL_DAY),
    // SRI: Strathmore Royal Infirmary, Forfar (all four categories)
    (1, "ophthalmology", MON | TUE | THU, ALL_DAY),
    (1, "cataract-surgery", TUE | THU, ALL_DAY),
    (1, "orthopaedics", MON | WED, ALL_DAY),
    (1, "knee-replacement", MON | THU, ALL_DAY),
    (1, "ent", WED | FRI, AM),
    (1, "urology", TUE, ALL_DAY),
    (1, "colonoscopy", MON | WED | FRI, ALL_DAY),
    (1, "chemotherapy", MON | TUE | WED | THU, ALL_DAY),
    // KGH: Kilbarchan General Hospital (outpatient and day case)
    (2, "cardiology", TUE | FRI, AM),
    (2, "dermatology", MON | WED, ALL_DAY),
    (2, "rheumatology", THU, ALL_DAY),
    (2, "general-surgery", MON | THU, ALL_DAY),
    (2, "diabetes", WED, PM),
    (2, "hernia-repair", TUE | FRI, ALL_DAY),
    (2, "cystoscopy", WED, ALL_DAY),
    // BMH: Balmuir Memorial Hospital, Dundee (outpatient, inpatient, chemotherapy)
    (3, "neurology", MON | WED, ALL_DAY),
    (3, "oncology", TUE | THU, ALL_DAY),
    (3, "respiratory", MON | FRI, PM),
    (3, "laparoscopic-cholecystectomy", TUE | THU, ALL_DAY),
    (3, "spinal-surgery", WED, ALL_DAY),
    (3, "haematology-day-unit", MON | WED | FRI, ALL_DAY),
    (3, "endoscopy", TUE | THU, ALL_DAY),
];

/// A laboratory analyte. Values are integers in units of 10^-dp.
pub(crate) struct Analyte {
    pub loinc: &'static str,
    pub display: &'static str,
    pub text: &'static str,
    pub ucum: &'static str,
    pub unit: &'static str,
    pub dp: u8,
    /// Reference range (male, female); `None` ends are open.
    pub male: (Option<i32>, Option<i32>),
    pub female: (Option<i32>, Option<i32>),
    /// Where normal values are drawn from.
    pub normal: (i32, i32),
    pub low_band: Option<(i32, i32)>,
    pub high_band: Option<(i32, i32)>,
}

pub(crate) const HB: Analyte = Analyte {
    loinc: "718-7",
    display: "Hemoglobin [Mass/volume] in Blood",
    text: "Haemoglobin",
    ucum: "g/L",
    unit: "g/L",
    dp: 0,
    male: (Some(130), Some(180)),
    female: (Some(115), Some(165)),
    normal: (120, 165),
    low_band: Some((78, 114)),
    high_band: Some((181, 195)),
};
pub(crate) const WBC: Analyte = Analyte {
    loinc: "6690-2",
    display: "Leukocytes [#/volume] in Blood by Automated count",
    text: "White cell count",
    ucum: "10*9/L",
    unit: "10^9/L",
    dp: 1,
    male: (Some(40), Some(110)),
    female: (Some(40), Some(110)),
    normal: (42, 105),
    low_band: Some((15, 39)),
    high_band: Some((111, 220)),
};
pub(crate) const PLT: Analyte = Analyte {
    loinc: "777-3",
    display: "Platelets [#/volume] in Blood by Automated count",
    text: "Platelets",
    ucum: "10*9/L",
    unit: "10^9/L",
    dp: 0,
    male: (Some(150), Some(400)),
    female: (Some(150), Some(400)),
    normal: (160, 390),
    low_band: Some((45, 149)),
    high_band: Some((401, 620)),
};
pub(crate) const NA: Analyte = Analyte {
    loinc: "2951-2",
    display: "Sodium [Moles/volume] in Serum or Plasma",
    text: "Sodium",
    ucum: "mmol/L",
    unit: "mmol/L",
    dp: 0,
    male: (Some(133), Some(146)),
    female: (Some(133), Some(146)),
    normal: (135, 145),
    low_band: Some((124, 132)),
    high_band: Some((147, 151)),
};
pub(crate) const K: Analyte = Analyte {
    loinc: "2823-3",
    display: "Potassium [Moles/volume] in Serum or Plasma",
    text: "Potassium",
    ucum: "mmol/L",
    unit: "mmol/L",
    dp: 1,
    male: (Some(35), Some(53)),
    female: (Some(35), Some(53)),
    normal: (36, 51),
    low_band: Some((29, 34)),
    high_band: Some((54, 63)),
};
pub(crate) const CREAT: Analyte = Analyte {
    loinc: "14682-9",
    display: "Creatinine [Moles/volume] in Serum or Plasma",
    text: "Creatinine",
    ucum: "umol/L",
    unit: "µmol/L",
    dp: 0,
    male: (Some(64), Some(104)),
    female: (Some(49), Some(90)),
    normal: (55, 95),
    low_band: None,
    high_band: Some((105, 320)),
};
pub(crate) const EGFR: Analyte = Analyte {
    loinc: "62238-1",
    display: "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, Plasma or Blood by Creatinine-based formula (CKD-EPI)",
    text: "eGFR",
    ucum: "mL/min/{1.73_m2}",
    unit: "mL/min/1.73m2",
    dp: 0,
    male: (Some(90), None),
    female: (Some(90), None),
    normal: (90, 120),
    low_band: Some((18, 89)),
    high_band: None,
};
pub(crate) const CRP: Analyte = Analyte {
    loinc: "1988-5",
    display: "C reactive protein [Mass/volume] in Serum or Plasma",
    text: "C-reactive protein",
    ucum: "mg/L",
    unit: "mg/L",
    dp: 0,
    male: (None, Some(5)),
    female: (None, Some(5)),
    normal: (0, 5),
    low_band: None,
    high_band: Some((6, 180)),
};
pub(crate) const HBA1C: Analyte = Analyte {
    loinc: "59261-8",
    display: "Hemoglobin A1c/Hemoglobin.total in Blood by IFCC protocol",
    text: "HbA1c",
    ucum: "mmol/mol",
    unit: "mmol/mol",
    dp: 0,
    male: (Some(20), Some(41)),
    female: (Some(20), Some(41)),
    normal: (28, 41),
    low_band: None,
    high_band: Some((48, 97)),
};

/// Lab panels: (LOINC code, display, text, analytes, weight).
pub(crate) struct Panel {
    pub loinc: &'static str,
    pub display: &'static str,
    pub text: &'static str,
    pub analytes: &'static [&'static Analyte],
    pub weight: u32,
}

pub(crate) const PANELS: &[Panel] = &[
    Panel {
        loinc: "58410-2",
        display: "CBC panel - Blood by Automated count",
        text: "Full blood count",
        analytes: &[&HB, &WBC, &PLT],
        weight: 40,
    },
    Panel {
        loinc: "24362-6",
        display: "Renal function 2000 panel - Serum or Plasma",
        text: "Urea and electrolytes",
        analytes: &[&NA, &K, &CREAT, &EGFR],
        weight: 30,
    },
    Panel {
        loinc: "1988-5",
        display: "C reactive protein [Mass/volume] in Serum or Plasma",
        text: "C-reactive protein",
        analytes: &[&CRP],
        weight: 15,
    },
    Panel {
        loinc: "59261-8",
        display: "Hemoglobin A1c/Hemoglobin.total in Blood by IFCC protocol",
        text: "HbA1c",
        analytes: &[&HBA1C],
        weight: 15,
    },
];

/// Imaging study templates.
pub(crate) struct Imaging {
    pub modality: &'static str,
    pub modality_display: &'static str,
    pub body_code: &'static str,
    pub body_display: &'static str,
    pub description: &'static str,
    /// SOP class UID for instances.
    pub sop_class: &'static str,
    pub series: (i64, i64),
    pub instances_per_series: (i64, i64),
    pub conclusions: &'static [&'static str],
}

pub(crate) const IMAGING: &[Imaging] = &[
    Imaging {
        modality: "DX",
        modality_display: "Digital Radiography",
        body_code: "51185008",
        body_display: "Thoracic structure",
        description: "XR Chest PA",
        sop_class: "1.2.840.10008.5.1.4.1.1.1.1",
        series: (1, 1),
        instances_per_series: (1, 2),
        conclusions: &[
            "No acute abnormality.",
            "Small left pleural effusion.",
            "Cardiomegaly. Lungs clear.",
            "Right lower zone consolidation, in keeping with infection. Suggest repeat film in 6 weeks.",
        ],
    },
    Imaging {
        modality: "DX",
        modality_display: "Digital Radiography",
        body_code: "12921003",
        body_display: "Pelvis structure",
        description: "XR Pelvis AP",
        sop_class: "1.2.840.10008.5.1.4.1.1.1.1",
        series: (1, 1),
        instances_per_series: (1, 2),
        conclusions: &[
            "No fracture seen.",
            "Moderate osteoarthritis of the left hip.",
            "Severe osteoarthritis of the right hip with loss of joint space.",
        ],
    },
    Imaging {
        modality: "CT",
        modality_display: "Computed Tomography",
        body_code: "51185008",
        body_display: "Thoracic structure",
        description: "CT Chest with contrast",
        sop_class: "1.2.840.10008.5.1.4.1.1.2",
        series: (2, 4),
        instances_per_series: (80, 320),
        conclusions: &[
            "No acute abnormality.",
            "Small left pleural effusion.",
            "4 mm right upper lobe nodule. Follow-up CT in 12 months recommended.",
            "No pulmonary embolus.",
        ],
    },
    Imaging {
        modality: "CT",
        modality_display: "Computed Tomography",
        body_code: "69536005",
        body_display: "Head structure",
        description: "CT Head without contrast",
        sop_class: "1.2.840.10008.5.1.4.1.1.2",
        series: (1, 3),
        instances_per_series: (30, 120),
        conclusions: &[
            "No acute intracranial abnormality.",
            "Age-related small vessel change. No acute haemorrhage.",
        ],
    },
    Imaging {
        modality: "MR",
        modality_display: "Magnetic Resonance",
        body_code: "122496007",
        body_display: "Lumbar spine structure",
        description: "MRI Lumbar spine",
        sop_class: "1.2.840.10008.5.1.4.1.1.4",
        series: (3, 6),
        instances_per_series: (15, 40),
        conclusions: &[
            "L4/5 disc protrusion with mild compression of the left L5 nerve root.",
            "Multilevel degenerative change. No cord or cauda equina compression.",
        ],
    },
    Imaging {
        modality: "MR",
        modality_display: "Magnetic Resonance",
        body_code: "72696002",
        body_display: "Knee region structure",
        description: "MRI Knee",
        sop_class: "1.2.840.10008.5.1.4.1.1.4",
        series: (3, 5),
        instances_per_series: (18, 30),
        conclusions: &[
            "Complex tear of the posterior horn of the medial meniscus.",
            "No internal derangement.",
        ],
    },
    Imaging {
        modality: "US",
        modality_display: "Ultrasound",
        body_code: "113345001",
        body_display: "Abdominal structure",
        description: "US Abdomen",
        sop_class: "1.2.840.10008.5.1.4.1.1.6.1",
        series: (1, 1),
        instances_per_series: (1, 3),
        conclusions: &[
            "Gallstones without evidence of cholecystitis.",
            "Normal liver, gallbladder, pancreas and kidneys.",
            "Mild fatty infiltration of the liver.",
        ],
    },
];

/// Allergy substances: (SNOMED code, display, category, type, manifestations indexes).
pub(crate) struct Allergen {
    pub code: &'static str,
    pub display: &'static str,
    pub category: &'static str,
    pub kind: &'static str,
    pub weight: u32,
}

pub(crate) const ALLERGENS: &[Allergen] = &[
    Allergen {
        code: "764146007",
        display: "Penicillin",
        category: "medication",
        kind: "allergy",
        weight: 40,
    },
    Allergen {
        code: "372687004",
        display: "Amoxicillin",
        category: "medication",
        kind: "allergy",
        weight: 10,
    },
    Allergen {
        code: "387458008",
        display: "Aspirin",
        category: "medication",
        kind: "intolerance",
        weight: 8,
    },
    Allergen {
        code: "387494007",
        display: "Codeine",
        category: "medication",
        kind: "intolerance",
        weight: 8,
    },
    Allergen {
        code: "111088007",
        display: "Latex",
        category: "environment",
        kind: "allergy",
        weight: 12,
    },
    Allergen {
        code: "256349002",
        display: "Peanut",
        category: "food",
        kind: "allergy",
        weight: 12,
    },
    Allergen {
        code: "288328004",
        display: "Bee venom",
        category: "environment",
        kind: "allergy",
        weight: 5,
    },
];

/// Reaction manifestations (SNOMED code, display).
pub(crate) const MANIFESTATIONS: &[(&str, &str)] = &[
    ("126485001", "Urticaria"),
    ("271807003", "Eruption of skin"),
    ("418290006", "Itching"),
    ("422587007", "Nausea"),
    ("267036007", "Dyspnea"),
    ("39579001", "Anaphylaxis"),
];

/// Progress-note texts by kind.
pub(crate) fn notes(kind: NoteKind) -> &'static [&'static str] {
    match kind {
        NoteKind::Cardiology => &[
            "Seen in cardiology clinic. Reports intermittent palpitations, no syncope. ECG shows sinus rhythm. Plan: 24-hour Holter monitor and review in 6 weeks.",
            "Exertional chest tightness for 3 months. Examination unremarkable. Plan: CT coronary angiogram; continue aspirin and atorvastatin.",
            "Heart failure review. Breathlessness improved since furosemide increased. Ankles less swollen. Repeat U&E in 1 week.",
        ],
        NoteKind::Respiratory => &[
            "COPD review. Two exacerbations this winter. Inhaler technique checked. Referred to pulmonary rehabilitation.",
            "Chronic cough for 10 weeks, never smoker. Chest X-ray clear. Spirometry arranged; trial of inhaled steroid.",
        ],
        NoteKind::Diabetes => &[
            "Type 2 diabetes review. HbA1c improved. Feet checked: pulses present, sensation intact. Continue metformin.",
            "Type 1 diabetes. Occasional nocturnal hypoglycaemia. Basal insulin reduced by 10%. Review with diabetes specialist nurse in 4 weeks.",
        ],
        NoteKind::Dermatology => &[
            "Pigmented lesion on left shoulder examined with dermatoscope: benign features. Reassured and discharged.",
            "Plaque psoriasis, moderate. Topical treatment not effective. Discussed phototherapy; patient keen.",
        ],
        NoteKind::Eyes => &[
            "Right cataract, visual acuity 6/18. Listed for right phacoemulsification and lens implant. Consent discussed.",
            "Post-operative review after cataract surgery. Eye quiet, acuity 6/6. Stop drops after 4 weeks. Discharged.",
        ],
        NoteKind::Orthopaedic => &[
            "Left hip pain limiting walking to 200 yards. X-ray shows advanced osteoarthritis. Listed for total hip replacement.",
            "Six weeks after knee replacement. Wound healed, flexion 95 degrees. Continue physiotherapy.",
            "Low back pain radiating to left leg. No red flags. MRI lumbar spine requested.",
        ],
        NoteKind::Surgical => &[
            "Right inguinal hernia, reducible, symptomatic. Listed for day-case repair. Risks and benefits discussed.",
            "Recurrent biliary colic with gallstones on ultrasound. Listed for laparoscopic cholecystectomy.",
            "Seen for review of visible haematuria. Flexible cystoscopy arranged.",
        ],
        NoteKind::Endoscopy => &[
            "Gastroscopy: mild gastritis, biopsies taken for H. pylori. No ulcer. Results to GP.",
            "Colonoscopy to caecum. Two small polyps removed. Surveillance according to histology.",
        ],
        NoteKind::Oncology => &[
            "Cycle 3 of chemotherapy given. Tolerated well; mild fatigue, no neutropenic episodes. Bloods satisfactory for next cycle.",
            "New patient: breast cancer after wide local excision. Discussed adjuvant chemotherapy; decision to treat made today.",
            "Delayed cycle by one week because of low neutrophil count. Repeat full blood count before next cycle.",
        ],
        NoteKind::Medical => &[
            "Reviewed in clinic. Symptoms stable on current treatment. Bloods today. Follow up in 3 months.",
            "Inflammatory arthritis, morning stiffness improving on methotrexate. Monitoring bloods satisfactory.",
            "Headaches with migrainous features. Neurological examination normal. Started propranolol.",
        ],
    }
}
